"""``/v1/ws``: one WebSocket that submits, subscribes, unsubscribes and cancels (docs/protocol.md).

A connection has one reader (client messages) and one writer (everything the server sends),
joined by the connection's bounded subscription buffer, so that replies and events leave in
order through a single sender.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import urlsplit

import orjson
from fastapi import APIRouter, WebSocket
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator
from starlette.websockets import WebSocketDisconnect

from hub.auth import Principal
from hub.deps import ServiceDep, SettingsDep, authenticate
from hub.errors import HubError
from hub.fanout import GAP, SlowConsumer
from hub.jobstore import Event, stream_key
from hub.schemas import JobRequest
from hub.service import JobService
from hub.settings import Settings

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
    except HubError as exc:
        await ws.close(CLOSE_POLICY, exc.message[:120])
        return
    await ws.accept()
    await Connection(ws, service, settings, caller).run()


def origin_allowed(ws: WebSocket, allowed: list[str]) -> bool:
    """A browser's page may connect from the hub's own origin or an allowed one (this stops
    cross-site WebSocket hijacking); clients that send no Origin are not browsers."""
    origin = ws.headers.get("origin")
    if origin is None or origin in allowed:
        return True
    return urlsplit(origin).netloc == ws.headers.get("host")


@dataclass
class Replay:
    """Stored events to send before the live ones held back for the same job or model."""

    key: tuple[str, str]
    events: list[Event]
    reset: bool = False


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


class ClientError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class Connection:
    ws: WebSocket
    service: JobService
    settings: Settings
    caller: Principal
    jobs: dict[str, tuple[int, int]] = field(default_factory=dict)  # job -> last id sent
    models: dict[str, tuple[int, int]] = field(default_factory=dict)  # model -> last id sent
    held: dict[tuple[str, str], list[Event]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.owner = self.caller.visible  # None: an admin, who sees every tenant's jobs
        self.sub = self.service.fanout.open(
            match=lambda e: self.owner is None or e.owner == self.owner
        )

    async def run(self) -> None:
        writer = asyncio.create_task(self._write())
        reader = asyncio.create_task(self._read())
        try:
            done, _ = await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # a close reason travels as an exception
        except _Close as close:
            with contextlib.suppress(Exception):
                await self.ws.close(close.code, close.reason)
        except WebSocketDisconnect:
            pass
        finally:
            self.service.fanout.remove(self.sub)
            for task in (reader, writer):
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task

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
                raise ClientError("invalid_json", f"the message is not valid JSON: {exc}") from None
            if not isinstance(message, dict):
                raise ClientError("invalid_message", "a message is a JSON object with a 'type'")
            ref = message.pop("ref", None)
            kind = message.pop("type", None)
            handler = self._handlers.get(kind) if isinstance(kind, str) else None
            if handler is None:
                raise ClientError(
                    "unknown_type",
                    f"unknown message type {kind!r}; use one of {', '.join(self._handlers)}",
                )
            await handler(self, message, ref)
        except ClientError as exc:
            self._reply({"type": "error", "code": exc.code, "message": exc.message, "ref": ref})
        except HubError as exc:
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
        job = await self.service.submit(request, owner=self.caller.tenant)
        self._reply({"type": "accepted", "ref": ref, "job": job})
        await self._subscribe_job(job["id"], "0")

    async def _subscribe(self, message: dict[str, Any], ref: Any) -> None:
        target = Target.model_validate(message)
        if len(self.jobs) + len(self.models) >= self.settings.ws_max_subscriptions:
            raise ClientError(
                "too_many_subscriptions",
                f"at most {self.settings.ws_max_subscriptions} subscriptions per socket; "
                "unsubscribe first",
            )
        after = target.last_event_id
        _check_event_id(after or "0")
        if target.job_id:
            await self.service.record(target.job_id, self.owner)  # 404 unless the caller's
        self._reply({"type": "accepted", "ref": ref, "subscription": target.named()})
        if target.job_id:
            await self._subscribe_job(target.job_id, after or "0")
        else:
            await self._subscribe_model(target.model or "", after)

    async def _subscribe_job(self, job_id: str, after: str) -> None:
        key = ("job", job_id)
        self.jobs[job_id] = max(self.jobs.get(job_id, (0, 0)), stream_key(after))
        self.held[key] = []  # live events wait until the replay is queued
        self.service.fanout.add(self.sub, key)
        self.sub.put(Replay(key, await self.service.store.events(job_id, after)))

    async def _subscribe_model(self, model: str, after: str | None) -> None:
        key = ("model", model)
        self.models[model] = max(self.models.get(model, (0, 0)), stream_key(after or "0"))
        self.held[key] = []
        self.service.fanout.add(self.sub, key)
        if after is None:
            self.sub.put(Replay(key, []))
            return
        reset = not await self.service.store.log_holds(after)
        events = [e for e in await self.service.store.log_after(after) if e.model == model]
        self.sub.put(Replay(key, events, reset=reset))

    async def _unsubscribe(self, message: dict[str, Any], ref: Any) -> None:
        target = Target.model_validate(message)
        if target.job_id in self.jobs:
            del self.jobs[target.job_id]
            self.service.fanout.remove(self.sub, ("job", target.job_id))
        elif target.model in self.models:
            del self.models[target.model]
            self.service.fanout.remove(self.sub, ("model", target.model))
        else:
            raise ClientError("not_subscribed", f"no subscription to {target.named()}")
        self._reply({"type": "accepted", "ref": ref})

    async def _cancel(self, message: dict[str, Any], ref: Any) -> None:
        self.caller.need("submit")
        target = Target.model_validate(message)
        if target.job_id is None:
            raise ClientError("invalid_request", "cancel needs a 'job_id'")
        job = await self.service.cancel(target.job_id, owner=self.owner)
        self._reply({"type": "accepted", "ref": ref, "job": job})

    async def _ping(self, message: dict[str, Any], ref: Any) -> None:
        self._reply({"type": "pong", "ref": ref})

    _handlers: ClassVar[dict[str, Any]] = {
        "submit": _submit,
        "subscribe": _subscribe,
        "unsubscribe": _unsubscribe,
        "cancel": _cancel,
        "ping": _ping,
    }

    def _reply(self, message: dict[str, Any]) -> None:
        self.sub.put(message)

    # --- writing ---------------------------------------------------------------------------

    async def _write(self) -> None:
        while True:
            try:
                item = await self.sub.get()
            except SlowConsumer as exc:
                raise _Close(CLOSE_TRY_AGAIN, str(exc)[:120]) from None
            if isinstance(item, Event):
                held = self.held.get(("job", item.job_id), self.held.get(("model", item.model)))
                if held is not None:
                    held.append(item)
                else:
                    await self._send_event(item)
            elif isinstance(item, Replay):
                if item.reset:
                    await self._send(
                        {
                            "type": "reset",
                            "model": item.key[1],
                            "message": "events after last_event_id are no longer kept: reload",
                        }
                    )
                for event in [*item.events, *self.held.pop(item.key, [])]:
                    await self._send_event(event)
            elif item is GAP:
                await self._catch_up()
            else:
                await self._send(item)

    async def _send_event(self, event: Event) -> None:
        key = stream_key(event.id)
        if event.job_id in self.jobs:
            if key <= self.jobs[event.job_id]:
                return
            self.jobs[event.job_id] = key
        elif event.model in self.models:
            if key <= self.models[event.model]:
                return
        else:
            return  # unsubscribed meanwhile
        if event.model in self.models:
            self.models[event.model] = max(self.models[event.model], key)
        await self._send_text('{"type":"event","event":' + event.json.decode() + "}")
        if event.terminal and event.job_id in self.jobs and event.model not in self.models:
            del self.jobs[event.job_id]  # nothing more will come
            self.service.fanout.remove(self.sub, ("job", event.job_id))

    async def _catch_up(self) -> None:
        """After a Redis reconnect: what pub/sub lost is in the logs."""
        for job_id, last in list(self.jobs.items()):
            for event in await self.service.store.events(job_id, f"{last[0]}-{last[1]}"):
                await self._send_event(event)
        if self.models:
            last = min(self.models.values())  # each model's own last id filters in _send_event
            for event in await self.service.store.log_after(f"{last[0]}-{last[1]}"):
                if event.model in self.models and self.sub.match(event):
                    await self._send_event(event)

    async def _send(self, message: dict[str, Any]) -> None:
        await self._send_text(orjson.dumps(message).decode())

    async def _send_text(self, text: str) -> None:
        try:
            async with asyncio.timeout(self.settings.slow_consumer_s):
                await self.ws.send_text(text)
        except TimeoutError:
            raise _Close(CLOSE_TRY_AGAIN, "the client stopped reading") from None


class _Close(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def _check_event_id(event_id: str) -> None:
    try:
        stream_key(event_id)
    except ValueError as exc:
        raise ClientError("invalid_event_id", str(exc)) from None
