"""A small client for the hub's HTTP API, sync (``Client``) and async (``AsyncClient``).

from hub.client import Client
with Client("http://127.0.0.1:8000") as hub:
    job = hub.submit("iris", data=[[5.1, 3.5, 1.4, 0.2]], wait=10)
    for event in hub.follow(job["id"]):
        print(event["type"], event["data"])
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import orjson
import websockets
from httpx_sse import aconnect_sse, connect_sse

TERMINAL = {"succeeded", "failed", "canceled"}
RETRIES = 20


class HubError(Exception):
    """An error answer of the hub: its status, code and message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


def _submit_args(
    model: str,
    data: Any,
    inputs: list[dict[str, Any]] | None,
    outputs: list[str] | None,
    wait: float | None,
    idempotency_key: str | None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model}
    body.update({"inputs": inputs} if inputs is not None else {"data": data})
    if outputs:
        body["outputs"] = outputs
    headers = {"Content-Type": "application/json"}
    if wait:
        headers["Prefer"] = f"wait={wait:g}"
    if idempotency_key:
        headers["Idempotency-Key"] = idempotency_key
    timeout = httpx.Timeout(30.0 + (wait or 0))
    return {
        "content": orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY),
        "headers": headers,
        "timeout": timeout,
    }


def _event(kind: str, data: str) -> dict[str, Any] | None:
    """An SSE message as a dict; ``reset`` and ``close`` become ``{"type": ...}`` items."""
    if not data:
        return None
    event = orjson.loads(data)
    return event if kind not in ("reset", "close") else {"type": kind, **event}


def _result(response: httpx.Response) -> Any:
    if response.is_success:
        return response.json()
    try:
        error = response.json()["error"]
        raise HubError(response.status_code, error["code"], error["message"])
    except (ValueError, KeyError, TypeError):
        raise HubError(response.status_code, "http_error", response.text[:200]) from None


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


class Client:
    def __init__(
        self, url: str = "http://127.0.0.1:8000", timeout: float = 30.0, api_key: str | None = None
    ) -> None:
        self.http = httpx.Client(base_url=url, timeout=timeout, headers=_headers(api_key))

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.http.close()

    def submit(
        self,
        model: str,
        data: Any = None,
        *,
        inputs: list[dict[str, Any]] | None = None,
        outputs: list[str] | None = None,
        wait: float | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        args = _submit_args(model, data, inputs, outputs, wait, idempotency_key)
        return _result(self.http.post("/v1/jobs", **args))

    def job(self, job_id: str) -> dict[str, Any]:
        return _result(self.http.get(f"/v1/jobs/{job_id}"))

    def jobs(self, **filters: Any) -> dict[str, Any]:
        params = {k: v for k, v in filters.items() if v is not None}
        return _result(self.http.get("/v1/jobs", params=params))

    def cancel(self, job_id: str) -> dict[str, Any]:
        return _result(self.http.post(f"/v1/jobs/{job_id}/cancel"))

    def models(self) -> list[dict[str, Any]]:
        return _result(self.http.get("/v1/models"))["models"]

    def model(self, name: str) -> dict[str, Any]:
        return _result(self.http.get(f"/v1/models/{name}"))

    def workers(self) -> list[dict[str, Any]]:
        return _result(self.http.get("/v1/workers"))["workers"]

    def follow(self, job_id: str, last_event_id: str | None = None) -> Iterator[dict[str, Any]]:
        """The job's events until its terminal one, reconnecting where it left off."""
        return self._events(f"/v1/jobs/{job_id}/events", {}, last_event_id, until_terminal=True)

    def watch(
        self, models: list[str] | None = None, last_event_id: str | None = None
    ) -> Iterator[dict[str, Any]]:
        """Live events of every job you may see (of ``models`` when given), resuming by itself.

        A ``{"type": "reset"}`` item means events were lost: reload your state.
        """
        return self._events("/v1/events", {"model": models or []}, last_event_id)

    def _events(
        self, path: str, params: dict[str, Any], last_id: str | None, until_terminal: bool = False
    ) -> Iterator[dict[str, Any]]:
        for attempt in range(RETRIES):
            headers = {"Last-Event-ID": last_id} if last_id else {}
            try:
                with connect_sse(
                    self.http, "GET", path, params=params, headers=headers, timeout=None
                ) as source:
                    if not source.response.is_success:
                        source.response.read()
                        _result(source.response)
                    for sse in source.iter_sse():
                        event = _event(sse.event, sse.data)
                        if event is None:
                            continue
                        last_id = event.get("id", last_id)
                        yield event
                        if until_terminal and event["type"] in TERMINAL:
                            return
            except httpx.TransportError:
                time.sleep(min(0.1 * 2**attempt, 2.0))
        raise HubError(503, "unreachable", f"lost the event stream {path}")


class AsyncClient:
    def __init__(
        self, url: str = "http://127.0.0.1:8000", timeout: float = 30.0, api_key: str | None = None
    ) -> None:
        self.http = httpx.AsyncClient(base_url=url, timeout=timeout, headers=_headers(api_key))

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.http.aclose()

    async def submit(
        self,
        model: str,
        data: Any = None,
        *,
        inputs: list[dict[str, Any]] | None = None,
        outputs: list[str] | None = None,
        wait: float | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        args = _submit_args(model, data, inputs, outputs, wait, idempotency_key)
        return _result(await self.http.post("/v1/jobs", **args))

    async def job(self, job_id: str) -> dict[str, Any]:
        return _result(await self.http.get(f"/v1/jobs/{job_id}"))

    async def cancel(self, job_id: str) -> dict[str, Any]:
        return _result(await self.http.post(f"/v1/jobs/{job_id}/cancel"))

    async def follow(
        self, job_id: str, last_event_id: str | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """The job's events until its terminal one, reconnecting where it left off."""
        path = f"/v1/jobs/{job_id}/events"
        for attempt in range(RETRIES):
            headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
            try:
                async with aconnect_sse(
                    self.http, "GET", path, headers=headers, timeout=None
                ) as source:
                    if not source.response.is_success:
                        await source.response.aread()
                        _result(source.response)
                    async for sse in source.aiter_sse():
                        event = _event(sse.event, sse.data)
                        if event is None:
                            continue
                        last_event_id = event["id"]
                        yield event
                        if event["type"] in TERMINAL:
                            return
            except httpx.TransportError:
                await asyncio.sleep(min(0.1 * 2**attempt, 2.0))
        raise HubError(503, "unreachable", f"lost the event stream {path}")

    async def session(self) -> Session:
        """A WebSocket session on ``/v1/ws``; use it as ``async with``."""
        url = str(self.http.base_url).replace("http", "ws", 1).rstrip("/") + "/v1/ws"
        auth = (
            {"Authorization": self.http.headers["Authorization"]}
            if "Authorization" in self.http.headers
            else {}
        )
        return Session(await websockets.connect(url, max_size=None, additional_headers=auth))


class Session:
    """One WebSocket to the hub: submit, subscribe, cancel, and read the events of all of them."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self._refs = itertools.count(1)
        self._early: list[dict[str, Any]] = []  # messages read while waiting for a reply

    async def __aenter__(self) -> Session:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.ws.close()

    async def request(self, type_: str, **fields: Any) -> dict[str, Any]:
        """Send a message and return its reply (``accepted`` or ``pong``); raise on ``error``."""
        ref = next(self._refs)
        await self.ws.send(orjson.dumps({"type": type_, "ref": ref, **fields}).decode())
        while True:
            message = orjson.loads(await self.ws.recv())
            if message.get("ref") != ref or message["type"] == "event":
                self._early.append(message)
                continue
            if message["type"] == "error":
                raise HubError(400, message["code"], message["message"])
            return message

    async def submit(self, model: str, data: Any = None, **fields: Any) -> dict[str, Any]:
        body = {"model": model, **({"data": data} if data is not None else {}), **fields}
        return (await self.request("submit", **body))["job"]

    async def subscribe(self, **what: Any) -> dict[str, Any]:
        return await self.request("subscribe", **what)

    async def cancel(self, job_id: str) -> dict[str, Any]:
        return (await self.request("cancel", job_id=job_id))["job"]

    async def messages(self) -> AsyncIterator[dict[str, Any]]:
        """Every server message in order (events, resets, errors of unreplied messages)."""
        while self._early:
            yield self._early.pop(0)
        async for raw in self.ws:
            yield orjson.loads(raw)
