"""A small client for the hub's HTTP API, sync (``Client``) and async (``AsyncClient``).

from hub.client import Client
with Client("http://127.0.0.1:8000") as hub:
    job = hub.submit("iris", data=[[5.1, 3.5, 1.4, 0.2]], wait=10)
    for event in hub.follow(job["id"]):
        print(event["type"], event["data"])

Both clients have the same methods with the same arguments and results, because the methods
are written once (``_Methods``) on shared parts: the route table, ``_Call`` (one request, built
the same for both), ``_result`` (answers and errors) and ``_Stream`` (SSE parsing and
resuming). Each client only sends (``_send``) and reads a stream (``_events``) its own way.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Iterator
from contextlib import aclosing, closing
from dataclasses import dataclass, field, replace
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx
import orjson
import websockets

TERMINAL = {"succeeded", "failed", "canceled"}
RETRIES = 20  # connections in a row that end without an event before a stream gives up

# name: (method, path, the member of the answer to return, or None for all of it)
ROUTES: dict[str, tuple[str, str, str | None]] = {
    "submit": ("POST", "/v1/jobs", None),
    "infer": ("POST", "/v1/jobs", "outputs"),  # "lane": "online"
    "jobs": ("GET", "/v1/jobs", None),
    "job": ("GET", "/v1/jobs/{}", None),
    "cancel": ("POST", "/v1/jobs/{}/cancel", None),
    "models": ("GET", "/v1/models", "models"),
    "model": ("GET", "/v1/models/{}", None),
    "workers": ("GET", "/v1/workers", "workers"),
    "outputs": ("GET", "/v1/jobs/{}/outputs", "outputs"),
    "follow": ("GET", "/v1/jobs/{}/events", None),
    "watch": ("GET", "/v1/events", None),
}


class HubError(Exception):
    """An error answer of the hub: its status, code and message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


def _result(response: httpx.Response) -> Any:
    """The answer's JSON body, or its error as a ``HubError`` (the body must have been read)."""
    if response.is_success:
        return response.json()
    try:
        error = response.json()["error"]
        raise HubError(response.status_code, error["code"], error["message"])
    except (ValueError, KeyError, TypeError):
        raise HubError(response.status_code, "http_error", response.text[:200]) from None


def _given(**values: Any) -> dict[str, Any]:
    """The fields that were given: a None or empty one is left out."""
    return {k: v for k, v in values.items() if v is not None and v != []}


@dataclass(frozen=True)
class _Call:
    """One request of the API, the same whichever client sends it."""

    route: str
    ids: tuple[str, ...] = ()  # the path's arguments, in order
    params: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None  # sent as JSON when not None
    wait_s: float = 0.0  # the hub may hold the answer this long: added to the read timeout
    stream: bool = False  # an event stream: no read timeout

    def request(self, http: httpx.Client | httpx.AsyncClient) -> httpx.Request:
        method, path, _ = ROUTES[self.route]
        url = path.format(*(quote(i, safe="") for i in self.ids))  # an id cannot change route
        content = None
        headers = self.headers
        if self.body is not None:
            content = orjson.dumps(self.body, option=orjson.OPT_SERIALIZE_NUMPY)
            headers = {"Content-Type": "application/json", **headers}
        read = http.timeout.read
        timeout = httpx.Timeout(
            None if self.stream or read is None else read + self.wait_s,
            connect=http.timeout.connect,
        )
        return http.build_request(
            method, url, params=self.params, headers=headers, content=content, timeout=timeout
        )

    def result(self, response: httpx.Response) -> Any:
        answer = _result(response)
        member = ROUTES[self.route][2]
        return answer[member] if member else answer


def _submit(
    model: str,
    data: Any,
    inputs: list[dict[str, Any]] | None,
    outputs: list[str] | None,
    priority: int | None,
    wait: float | None,
    idempotency_key: str | None,
    stream_outputs: bool,
    online: bool = False,
) -> _Call:
    body: dict[str, Any] = {"model": model}
    body.update({"inputs": inputs} if inputs is not None else {"data": data})
    body.update(_given(outputs=outputs or None, priority=priority))
    if stream_outputs:
        body["stream_outputs"] = True
    if online:
        body["lane"] = "online"
    headers: dict[str, str] = {}
    if wait:
        headers["Prefer"] = f"wait={wait:g}"
    if idempotency_key:
        headers["Idempotency-Key"] = idempotency_key
    route = "infer" if online else "submit"
    return _Call(route, body=body, headers=headers, wait_s=wait or 0.0)


@dataclass
class SSEMessage:
    """One Server-Sent Events message (see the HTML standard's "event stream interpretation")."""

    event: str = "message"
    data: list[str] = field(default_factory=list)
    id: str | None = None


class SSEParser:
    """Turns the lines of an event stream into messages; pure, so both clients share it."""

    def __init__(self) -> None:
        self._message = SSEMessage()

    def feed(self, line: str) -> SSEMessage | None:
        """The message a blank line ends, else None (fields are kept until then)."""
        if not line:
            message, self._message = self._message, SSEMessage()
            return message if message.data or message.id is not None else None
        if line.startswith(":"):  # a comment: the hub's pings
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._message.data.append(value)
        elif name == "event":
            self._message.event = value
        elif name == "id" and "\0" not in value:
            self._message.id = value
        return None  # "retry" and unknown fields: this client has its own backoff


class _Stream:
    """One event stream across its connections: where it is, whether it is over, and when to
    try again after a connection ended early."""

    def __init__(self, call: _Call, last_id: str | None, until_terminal: bool) -> None:
        self.call = call
        self.last_id = last_id
        self.until_terminal = until_terminal
        self.done = False
        self._failures = 0  # connections in a row that ended before an event came
        self._parser = SSEParser()

    def request(self, http: httpx.Client | httpx.AsyncClient) -> httpx.Request:
        """The request of the next connection, resuming after the last event seen."""
        self._parser = SSEParser()  # a message cut by a lost connection is dropped
        resume = {"Last-Event-ID": self.last_id} if self.last_id else {}
        return replace(self.call, headers={**self.call.headers, **resume}).request(http)

    def feed(self, line: str) -> dict[str, Any] | None:
        """The event a line completes, if any; ``reset`` and ``close`` become
        ``{"type": ...}`` items."""
        message = self._parser.feed(line)
        if message is None:
            return None
        # in a feed of several pools the id is a resume token, a position per pool (ids of two
        # pools' logs do not compare: contract/jobstore.py, Position): sent back as it is
        self.last_id = message.id or self.last_id
        if not message.data:
            return None
        self._failures = 0
        event = orjson.loads("\n".join(message.data))
        if message.event in ("reset", "close"):
            return {"type": message.event, **event}
        self.done = self.until_terminal and event["type"] in TERMINAL
        return event

    def backoff(self) -> float:
        """Seconds to wait before connecting again; raise when too many connections failed."""
        self._failures += 1
        if self._failures > RETRIES:
            raise HubError(
                503, "unreachable", f"lost the {self.call.route} stream {' '.join(self.call.ids)}"
            )
        return min(0.1 * 2 ** (self._failures - 1), 2.0)


def _follow(job_id: str, last_event_id: str | None) -> _Stream:
    return _Stream(_Call("follow", (job_id,), stream=True), last_event_id, until_terminal=True)


def _watch(models: list[str] | None, job_ids: list[str] | None, last_id: str | None) -> _Stream:
    params = _given(model=models, job_id=job_ids)
    return _Stream(_Call("watch", params=params, stream=True), last_id, until_terminal=False)


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


D = TypeVar("D")  # what a method that answers one object returns: the dict, or an awaitable
L = TypeVar("L")  # the same for a list
S = TypeVar("S")  # an event stream: an iterator, or an async one


class _Methods(ABC, Generic[D, L, S]):
    """The API's methods, written once: a client only says how it sends (``_send``) and how
    it reads a stream (``_events``)."""

    @abstractmethod
    def _send(self, call: _Call) -> Any: ...

    @abstractmethod
    def _events(self, stream: _Stream) -> S: ...

    def submit(
        self,
        model: str,
        data: Any = None,
        *,
        inputs: list[dict[str, Any]] | None = None,
        outputs: list[str] | None = None,
        priority: int | None = None,
        wait: float | None = None,
        idempotency_key: str | None = None,
        stream_outputs: bool = False,
    ) -> D:
        """Queue a job; with ``wait`` the hub answers when it is done (or after ``wait`` s).
        ``stream_outputs``: an ``output`` event per chunk of rows as it is done."""
        call = _submit(
            model, data, inputs, outputs, priority, wait, idempotency_key, stream_outputs
        )
        return self._send(call)

    def infer(
        self,
        model: str,
        data: Any = None,
        *,
        inputs: list[dict[str, Any]] | None = None,
        outputs: list[str] | None = None,
        priority: int | None = None,
        timeout: float | None = None,
    ) -> L:
        """Run a request on the online lane: its outputs (V2 tensors) at once, batched with
        other requests, no job kept. ``timeout``: its deadline in s, if sooner than the
        model's ``timeout_s``."""
        call = _submit(model, data, inputs, outputs, priority, timeout, None, False, online=True)
        return self._send(call)

    def job(self, job_id: str) -> D:
        return self._send(_Call("job", (job_id,)))

    def jobs(
        self,
        *,
        model: str | None = None,
        status: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> D:
        """A page of jobs, newest first: ``{"jobs": [...], "next_cursor": ...}``."""
        params = _given(model=model, status=status, limit=limit, cursor=cursor)
        return self._send(_Call("jobs", params=params))

    def cancel(self, job_id: str) -> D:
        return self._send(_Call("cancel", (job_id,)))

    def outputs(self, job_id: str, rows: tuple[int, int] | None = None) -> L:
        """A succeeded job's outputs as V2 tensors, however large (``rows``: some of them)."""
        params = {"rows": f"{rows[0]}:{rows[1]}"} if rows else {}
        return self._send(_Call("outputs", (job_id,), params=params))

    def models(self) -> L:
        return self._send(_Call("models"))

    def model(self, name: str) -> D:
        return self._send(_Call("model", (name,)))

    def workers(self) -> L:
        return self._send(_Call("workers"))

    def follow(self, job_id: str, last_event_id: str | None = None) -> S:
        """The job's events (after ``last_event_id``) until its terminal one, reconnecting
        where it left off."""
        return self._events(_follow(job_id, last_event_id))

    def watch(
        self,
        models: list[str] | None = None,
        last_event_id: str | None = None,
        *,
        job_ids: list[str] | None = None,
    ) -> S:
        """Live events of every job you may see (of ``models`` or ``job_ids`` when given),
        resuming by itself. A ``{"type": "reset"}`` item means events were lost: reload."""
        return self._events(_watch(models, job_ids, last_event_id))


Item = dict[str, Any]


class Client(_Methods[Item, list[Item], Iterator[Item]]):
    def __init__(
        self, url: str = "http://127.0.0.1:8000", timeout: float = 30.0, api_key: str | None = None
    ) -> None:
        self.http = httpx.Client(base_url=url, timeout=timeout, headers=_headers(api_key))

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.http.close()

    def _send(self, call: _Call) -> Any:
        return call.result(self.http.send(call.request(self.http)))

    def _events(self, stream: _Stream) -> Iterator[Item]:
        while not stream.done:
            try:
                response = self.http.send(stream.request(self.http), stream=True)
                with closing(response):
                    if not response.is_success:
                        response.read()
                        _result(response)
                    if response.status_code == 204:  # the job ended at our last event
                        return
                    for line in response.iter_lines():
                        if (event := stream.feed(line)) is not None:
                            yield event
                        if stream.done:
                            return
            except httpx.TransportError:
                pass
            time.sleep(stream.backoff())


class AsyncClient(_Methods[Awaitable[Item], Awaitable[list[Item]], AsyncIterator[Item]]):
    """``Client``'s methods, awaited (``async for`` on ``follow`` and ``watch``), plus
    ``session()`` for the WebSocket."""

    def __init__(
        self, url: str = "http://127.0.0.1:8000", timeout: float = 30.0, api_key: str | None = None
    ) -> None:
        self.http = httpx.AsyncClient(base_url=url, timeout=timeout, headers=_headers(api_key))

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.http.aclose()

    async def session(self) -> Session:
        """A WebSocket session on ``/v1/ws``; use it as ``async with``."""
        url = str(self.http.base_url).replace("http", "ws", 1).rstrip("/") + "/v1/ws"
        auth = (
            {"Authorization": self.http.headers["Authorization"]}
            if "Authorization" in self.http.headers
            else {}
        )
        return Session(await websockets.connect(url, max_size=None, additional_headers=auth))

    async def _send(self, call: _Call) -> Any:
        return call.result(await self.http.send(call.request(self.http)))

    async def _events(self, stream: _Stream) -> AsyncIterator[Item]:
        while not stream.done:
            try:
                response = await self.http.send(stream.request(self.http), stream=True)
                async with aclosing(response):
                    if not response.is_success:
                        await response.aread()
                        _result(response)
                    if response.status_code == 204:  # the job ended at our last event
                        return
                    async for line in response.aiter_lines():
                        if (event := stream.feed(line)) is not None:
                            yield event
                        if stream.done:
                            return
            except httpx.TransportError:
                pass
            await asyncio.sleep(stream.backoff())


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
