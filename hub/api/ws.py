"""``/v1/ws``: one WebSocket that submits, subscribes, unsubscribes and cancels, and sends the
deployment's ``stats`` to connections that ask (hub/metrics/stats.py; docs/protocol.md).

A connection has one reader (client messages) and one writer (everything the server sends),
joined by the connection's bounded subscription buffer, so that replies and events leave in
order through a single sender.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import urlsplit

import orjson
from fastapi import APIRouter, WebSocket
from fastapi.routing import APIWebSocketRoute
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocketDisconnect

from contract.errors import InferhubError, InvalidInput, MalformedRequest, NotFound, OverCapacity
from contract.events import Event, stream_key
from contract.position import Position
from contract.settings import Settings
from hub import frames
from hub.auth import Principal
from hub.delivery import Delivery, Done, Reset, Topic
from hub.deps import ServiceDep, SettingsDep, authenticate
from hub.jobview import FINISHED
from hub.metrics.stats import Frame, StatsFeed
from hub.outbox import Outbox, Stuck
from hub.schemas import JobRequest
from hub.service import JobService
from hub.subscription import SlowConsumer, Tick
from hub.wire import Wire

log = logging.getLogger(__name__)

router = APIRouter(tags=["websocket"])

CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_TRY_AGAIN = 1013


@router.websocket("/v1/ws")
async def websocket(ws: WebSocket, service: ServiceDep, settings: SettingsDep) -> None:
    if not origin_allowed(ws, settings.allowed_origins):
        await ws.close(CLOSE_POLICY, "this origin may not connect: see INFERHUB_ALLOWED_ORIGINS")
        return
    try:
        caller = (await authenticate(ws, tickets=True)).need("read")
        service.streams.check(caller.visible)
    except InferhubError as exc:
        await ws.close(close_code(exc), exc.message[:120])
        return
    await ws.accept()
    # the slot and the feed by hand, not by context managers: their generators would be kept
    # for as long as the socket is open
    service.streams.take(caller.visible)
    feed = Delivery(service.store, service.fanout, caller.visible)
    try:
        await Connection(ws, service, settings, caller, feed, ws.app.state.stats).run()
    finally:
        feed.close()
        service.streams.give(caller.visible)


class DirectRoute:
    """``/v1/ws`` past FastAPI's routing, dependency solving and exit stacks
    (``hub/middleware/shortcut.py``): they are kept for as long as a socket is open, a few KiB
    of every idle connection. The route stays in the app for a hub behind a root path or with
    tracing on, and for the test client."""

    def __init__(self, route: APIWebSocketRoute) -> None:
        self.path = route.path  # the metrics' label

    def path_parameters(self, scope: Scope) -> dict[str, Any] | None:
        """``{}`` if ``scope`` is this route's handshake, else None."""
        if scope["type"] != "websocket" or scope["path"] != self.path or scope.get("root_path"):
            return None
        return {}

    def shortcut(self) -> Callable[[Scope, Receive, Send], Coroutine[Any, Any, None]]:
        async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
            state = scope["app"].state
            await websocket(WebSocket(scope, receive, send), state.service, state.settings)

        return asgi


def direct_routes() -> list[DirectRoute]:
    return [DirectRoute(r) for r in router.routes if isinstance(r, APIWebSocketRoute)]


def close_code(exc: InferhubError) -> int:
    """An error before the socket is accepted, as its close code: try again later when over
    capacity or unavailable, else a policy violation (no valid key, a missing scope)."""
    return CLOSE_TRY_AGAIN if exc.status in (429, 503) else CLOSE_POLICY


def origin_allowed(ws: WebSocket, allowed: list[str]) -> bool:
    """A browser's page may connect from the hub's own origin or an allowed one (this stops
    cross-site WebSocket hijacking); clients that send no Origin are not browsers."""
    origin = ws.headers.get("origin")
    if origin is None or origin in allowed:
        return True
    return urlsplit(origin).netloc == ws.headers.get("host")


class Target(BaseModel):
    """What ``subscribe``, ``unsubscribe`` and ``cancel`` name: one job, or one model."""

    model_config = ConfigDict(extra="forbid")
    job_id: str | None = None
    model: str | None = None
    last_event_id: str | None = None

    @model_validator(mode="after")
    def one(self) -> Target:
        if (self.job_id is None) == (self.model is None):
            raise ValueError("name one 'job_id' or one 'model'")
        return self

    def named(self) -> dict[str, str]:
        return {"job_id": self.job_id} if self.job_id is not None else {"model": self.model or ""}


class StatsRequest(BaseModel):
    """``stats``: start (``on``, the default) or stop the periodic ``stats`` message."""

    model_config = ConfigDict(extra="forbid")
    on: bool = True


@dataclass(slots=True)
class Connection:
    ws: WebSocket
    service: JobService
    settings: Settings
    caller: Principal
    feed: Delivery  # every event and reply leaves through it, in order
    stats: StatsFeed

    async def run(self) -> None:
        """The writer runs in the connection's own task, the reader in one more; when the
        reader ends, its end reaches the writer in order, through the feed."""
        reader = asyncio.create_task(self._read())
        reader.add_done_callback(self._reader_done)
        try:
            await self._write(reader)
        except _Close as close:
            client = self.ws.client
            log.info("closing the WebSocket of %s: %s", client and client.host, close.reason)
            try:  # the reason reaches a client that reads again within the same allowance
                async with asyncio.timeout(self.settings.slow_consumer_s):
                    await self.ws.close(close.code, close.reason)
            except TimeoutError:
                self.ws.scope["app"].state.streams.cut(self.ws.scope)
            except Exception:  # the client left meanwhile
                pass
        except WebSocketDisconnect:
            pass
        finally:
            self.stats.discard(self.feed)
            reader.cancel()
            with contextlib.suppress(BaseException):
                await reader

    def _reader_done(self, _: object) -> None:
        self.feed.put(_READER_DONE)

    # --- reading ---------------------------------------------------------------------------

    async def _read(self) -> None:
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            if text is None:
                self._reply(
                    {
                        "type": "error",
                        "code": "binary_frame",
                        "message": "send JSON text frames, not binary ones",
                    }
                )
                continue
            if len(text) > self.settings.ws_max_message_bytes:
                raise _Close(
                    CLOSE_TOO_BIG,
                    f"message over {self.settings.ws_max_message_bytes} bytes",
                )
            await self._handle(text)

    async def _handle(self, text: str) -> None:
        ref = None
        try:
            try:
                message = orjson.loads(text)
            except orjson.JSONDecodeError as exc:
                raise MalformedRequest(
                    f"the message is not valid JSON: {exc}", "invalid_json"
                ) from None
            if not isinstance(message, dict):
                raise MalformedRequest(
                    "a message is a JSON object with a 'type'", "invalid_message"
                )
            ref = message.pop("ref", None)
            kind = message.pop("type", None)
            handler = self._handlers.get(kind) if isinstance(kind, str) else None
            if handler is None:
                raise MalformedRequest(
                    f"unknown message type {kind!r}; use one of {', '.join(self._handlers)}",
                    "unknown_type",
                )
            await handler(self, message, ref)
        except InferhubError as exc:
            self._reply({"type": "error", "code": exc.code, "message": exc.message, "ref": ref})
        except ValidationError as exc:
            detail = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'message'}: {e['msg']}" for e in exc.errors()[:5]
            )
            self._reply({"type": "error", "code": "invalid_request", "message": detail, "ref": ref})
        except Exception:  # a bug must cost one message its answer, never the socket
            log.exception("websocket message failed: %.200s", text)
            message = "the hub could not handle this message; it is logged"
            self._reply({"type": "error", "code": "internal_error", "message": message, "ref": ref})

    async def _submit(self, message: dict[str, Any], ref: Any) -> None:
        self.caller.need("submit")
        request = JobRequest.model_validate(message)
        if request.lane == "online":
            raise InvalidInput(
                "the WebSocket's submit queues a job, to follow by its events: for an answer "
                "without a job, POST /v1/jobs with lane 'online', or /v2 infer",
                "not_online",
            )
        self._check_room()  # the job's events are a subscription too
        job = await self.service.submit(request, owner=self.caller.tenant)
        self._reply({"type": "accepted", "ref": ref, "job": job})
        self.feed.follow(("job", job["id"]), Topic.job(job["id"]), "0")

    async def _subscribe(self, message: dict[str, Any], ref: Any) -> None:
        target = Target.model_validate(message)
        self._check_room()
        after = target.last_event_id
        _check_event_id(after or "0", feed=not target.job_id)
        if target.job_id:
            record = await self.service.record(target.job_id, self.caller.visible)  # else 404
            finished = record["status"] in FINISHED
        self._reply({"type": "accepted", "ref": ref, "subscription": target.named()})
        if target.job_id:
            topic = Topic.job(target.job_id)
            self.feed.follow(("job", target.job_id), topic, after or "0", finished=finished)
        else:
            self.feed.follow(("model", target.model), Topic.model(target.model or ""), after)

    def _check_room(self) -> None:
        if len(self.feed) >= self.settings.ws_max_subscriptions:
            raise OverCapacity(
                f"at most {self.settings.ws_max_subscriptions} subscriptions per socket; "
                "unsubscribe first",
                "too_many_subscriptions",
            )

    async def _unsubscribe(self, message: dict[str, Any], ref: Any) -> None:
        target = Target.model_validate(message)
        name = ("job", target.job_id) if target.job_id else ("model", target.model)
        if not self.feed.drop(name):
            raise NotFound(f"no subscription to {target.named()}", "not_subscribed")
        self._reply({"type": "accepted", "ref": ref})

    async def _cancel(self, message: dict[str, Any], ref: Any) -> None:
        self.caller.need("submit")
        target = Target.model_validate(message)
        if target.job_id is None:
            raise InvalidInput("cancel needs a 'job_id'", "invalid_request")
        job = await self.service.cancel(target.job_id, owner=self.caller.visible)
        self._reply({"type": "accepted", "ref": ref, "job": job})

    async def _ping(self, message: dict[str, Any], ref: Any) -> None:
        self._reply({"type": "pong", "ref": ref})

    async def _stats(self, message: dict[str, Any], ref: Any) -> None:
        on = StatsRequest.model_validate(message).on
        stats = {"on": on, "interval_s": self.stats.interval_s}
        self._reply({"type": "accepted", "ref": ref, "stats": stats})  # before the first frame
        if on:
            self.stats.add(self.feed, self.caller.admin, self.feed.put)
        else:
            self.stats.discard(self.feed)

    _handlers: ClassVar[dict[str, Any]] = {
        "submit": _submit,
        "subscribe": _subscribe,
        "unsubscribe": _unsubscribe,
        "cancel": _cancel,
        "ping": _ping,
        "stats": _stats,
    }

    def _reply(self, message: dict[str, Any]) -> None:
        self.feed.put(message)

    # --- writing ---------------------------------------------------------------------------

    async def _write(self, reader: asyncio.Task[None]) -> None:
        """Everything pending leaves at once: on uvicorn, as frames written to the socket
        (hub/outbox.py; an event's frame is shared by every socket, and live events are
        written by the fan-out itself while this writer is idle); elsewhere as ASGI messages.
        Only a writer whose socket buffer is full waits, with a timer."""
        wire = Wire.of(self.ws.scope)
        out = Outbox(_frame, self.settings.slow_consumer_s, wire) if wire and wire.raw else None
        if out is not None:
            self.feed.attach(out)
        while True:
            try:
                if out is not None:
                    out.idle = True
                items = await self.feed.batch()
            except SlowConsumer as exc:
                raise _Close(CLOSE_TRY_AGAIN, str(exc)[:120]) from None
            finally:
                if out is not None:
                    out.idle = False
            try:
                if out is None:
                    await self._send_texts(wire, [_text(i) for i in items if _sent(i)])
                elif not await out.write([_frame(i) for i in items]):
                    await reader  # the client left: the reader says so
                    return
            except Stuck:
                raise _Close(CLOSE_TRY_AGAIN, "the client stopped reading") from None
            if _READER_DONE in items:
                reader.result()  # a close reason travels as an exception
                return

    async def _send_texts(self, wire: Wire | None, texts: list[str]) -> None:
        """The ASGI way, one message after the other, under one timer for the lot when the
        socket's buffer cannot be seen."""
        try:
            async with asyncio.timeout(None if wire else self.settings.slow_consumer_s):
                for text in texts:
                    if wire is not None and not await wire.drained(self.settings.slow_consumer_s):
                        raise Stuck
                    await self.ws.send_text(text)
        except TimeoutError:
            raise Stuck from None


class _Close(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def _check_event_id(event_id: str, *, feed: bool) -> None:
    """A job's event id; for a feed, a position per pool too (position.Position)."""
    try:
        Position.parse(event_id) if feed else stream_key(event_id)
    except ValueError as exc:
        raise MalformedRequest(str(exc), "invalid_event_id") from None


_RESET = "events after last_event_id are no longer kept: reload"
_READER_DONE = object()
"""The reader returned or raised: the writer ends after what was queued before."""


def _sent(item: Any) -> bool:
    # a job that ended needs no word (its event said), and the heartbeat is for SSE
    return not isinstance(item, Done | Tick) and item is not _READER_DONE


def _frame(item: Any) -> bytes:
    """The item as one WebSocket frame (b"": nothing to send); events and stats are encoded
    once for all sockets."""
    if isinstance(item, Event):
        return frames.ws(item)
    if isinstance(item, Frame):
        return item.wire
    if not _sent(item):
        return b""
    return frames.text_frame(orjson.dumps(_message(item)))


def _text(item: Any) -> str:
    if isinstance(item, Event):
        return item.ws
    if isinstance(item, Frame):
        return item.text
    return orjson.dumps(_message(item)).decode()


def _message(item: Any) -> dict[str, Any]:
    if isinstance(item, Reset):
        model = item.topic[1] if isinstance(item.topic, tuple) else ""  # ("model", m)
        return {"type": "reset", "model": model, "message": _RESET}
    return item  # type: ignore[no-any-return]  # a reply
