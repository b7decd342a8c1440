"""What this worker serves, changed while it runs: Triton's repository extension.

The desired state is in Redis (``contract/repository.py``): the models unloaded through the
hub, and a generation bumped with each load or unload. The worker applies it when nudged (the
hub publishes on ``keys.repository_nudge``), at each heartbeat, and rescans its repository
folder every ``repository_poll_s`` (Triton's ``--model-control-mode=poll``): a model or version
dropped in is loaded; a changed file is loaded again; a version or model gone, or unloaded, is
dropped. New work goes to the new batchers at once; a batcher that is replaced or dropped
drains (its requests in flight finish) before it is closed. ``models`` and ``batchers`` are
changed in place: the job functions read them from ``ctx``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from contract import keys, repository
from contract.channels import Subscriber
from contract.connection import database
from workers.batcher import Batcher
from workers.repository import Model, fingerprint, load_model, model_dirs, reason
from workers.stats import Tally

log = logging.getLogger(__name__)

Fingerprint = tuple[tuple[str, int, int], ...]


class Serving:
    def __init__(self, root: Path, pool: str, tally: Tally) -> None:
        self.root = root
        self.pool = pool
        self.tally = tally
        self.models: dict[str, Model] = {}
        self.batchers: dict[tuple[str, str], Batcher] = {}
        self.unloaded: frozenset[str] = frozenset()
        self.generation = 0  # the last load/unload of the hub applied here
        self._errors: dict[str, str] = {}  # model folder -> why it is not served
        self._seen: dict[str, Fingerprint] = {}  # model folder -> its files when last read
        self._lock = asyncio.Lock()
        self._draining: set[asyncio.Task[None]] = set()

    @property
    def errors(self) -> list[str]:
        return [f"{folder}: {why}" for folder, why in sorted(self._errors.items())]

    async def refresh(self, redis: Redis | None = None) -> bool:
        """Read the desired state (when given Redis) and the folder, and serve what they say;
        whether anything changed. It returns once what was dropped has drained, and only then
        says (``generation``) that the change is applied."""
        async with self._lock:
            generation, unloaded = self.generation, self.unloaded
            if redis is not None:
                generation, unloaded = await repository.desired(redis)
            changed = await asyncio.to_thread(self._scan, unloaded)
            if changed is not None:
                self._apply(changed)
            self.unloaded = unloaded
            await self.drained()
            moved, self.generation = generation != self.generation, generation
            return changed is not None or moved

    def _scan(self, unloaded: frozenset[str]) -> dict[str, Model] | None:
        """The models to serve, read again where their files changed (in a thread: it creates
        onnxruntime sessions); None when nothing changed."""
        models: dict[str, Model] = {}
        seen: dict[str, Fingerprint] = {}
        errors: dict[str, str] = {}
        if not self.root.is_dir():
            errors[str(self.root)] = "the model repository does not exist"
        for folder in model_dirs(self.root):
            key = str(folder)
            if folder.name in unloaded:
                continue
            seen[key] = print_ = fingerprint(folder)
            current = self.models.get(folder.name)
            if self._seen.get(key) == print_:
                if current is not None:
                    models[folder.name] = current
                elif key in self._errors:
                    errors[key] = self._errors[key]
                continue
            try:
                model = load_model(folder, self.pool, current)
            except Exception as exc:  # onnxruntime raises its own types: the model is skipped
                errors[key] = reason(exc)
                log.error("model skipped: %s: %s", folder, errors[key])
                continue
            if model is not None:
                models[model.name] = model
        unchanged = (
            seen == self._seen
            and errors == self._errors
            and models.keys() == self.models.keys()
            and all(models[n] is self.models[n] for n in models)
        )
        self._seen, self._errors = seen, errors
        return None if unchanged else models

    def _apply(self, models: dict[str, Model]) -> None:
        batchers: dict[tuple[str, str], Batcher] = {}
        for name, model in models.items():
            before = self.models.get(name)
            for version, mv in model.versions.items():
                kept = self.batchers.get((name, version))
                same = before is not None and before.versions.get(version) is mv
                if (
                    kept is not None
                    and same
                    and before is not None
                    and before.config == model.config
                ):
                    batchers[name, version] = kept
                else:
                    batchers[name, version] = batcher_of(model, version, self.tally)
        retired = [b for key, b in self.batchers.items() if batchers.get(key) is not b]
        added = sorted(set(batchers) - set(self.batchers))
        gone = sorted(set(self.batchers) - set(batchers))
        self.models.clear()
        self.models.update(models)
        self.batchers.clear()
        self.batchers.update(batchers)
        for batcher in retired:
            task = asyncio.create_task(_drain(batcher), name="drain")
            self._draining.add(task)
            task.add_done_callback(self._draining.discard)
        if added or gone or retired:
            log.info(
                "serving %s (loaded %s; dropped %s; draining %d batchers)",
                ", ".join(sorted(self.models)) or "nothing",
                _names(added) or "-",
                _names(gone) or "-",
                len(retired),
            )

    async def drained(self) -> None:
        """Wait until every dropped batcher has drained."""
        while self._draining:
            tasks = list(self._draining)
            await asyncio.gather(*tasks, return_exceptions=True)
            self._draining.difference_update(tasks)

    async def close(self) -> None:
        for task in list(self._draining):
            task.cancel()
        for batcher in self.batchers.values():
            await batcher.close()


def batcher_of(model: Model, version: str, tally: Tally) -> Batcher:
    mv = model.versions[version]
    return Batcher(
        mv.session,
        max_batch_size=model.config.max_batch_size,
        preferred_batch_size=model.config.batching.preferred_batch_size,
        max_queue_delay_ms=model.config.batching.max_queue_delay_ms,
        batchable=mv.batchable,
        counts=tally.of(model.name, version),
    )


def _names(pairs: list[tuple[str, str]]) -> str:
    return ", ".join(f"{name}/{version}" for name, version in pairs)


async def _drain(batcher: Batcher) -> None:
    """Close the batcher once the requests it holds have run."""
    await batcher.drained()
    await batcher.close()


async def follow_forever(
    serving: Serving, redis: Redis, *, poll_s: float, on_change: Any, check_every_s: float
) -> None:
    """Apply the desired state when nudged and every ``check_every_s``; rescan the folder
    every ``poll_s`` (0: only when nudged). ``on_change()`` is awaited after each change
    applied (drained included), so that the heartbeat says it at once."""
    nudge = asyncio.Event()
    listener = asyncio.create_task(_listen(redis, nudge), name="repository-nudge")
    loop = asyncio.get_running_loop()
    next_scan = loop.time() + poll_s if poll_s else float("inf")
    try:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(check_every_s):
                    await nudge.wait()
            nudge.clear()
            try:
                generation, unloaded = await repository.desired(redis)
                due = loop.time() >= next_scan
                if due or generation != serving.generation or unloaded != serving.unloaded:
                    if due:
                        next_scan = loop.time() + poll_s
                    if await serving.refresh(redis):
                        await on_change()
            except (RedisError, OSError) as exc:
                log.warning("repository state unreadable, retrying: %s", exc)
            except Exception:  # a model folder that breaks the scan must not stop the follower
                log.exception("repository refresh failed; trying again at the next check")
    finally:
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener


async def _listen(redis: Redis, nudge: asyncio.Event) -> None:
    channel = keys.repository_nudge(database(redis))
    while True:
        try:
            async with Subscriber(redis) as channels:
                await channels.subscribe(channel)
                nudge.set()  # anything published while (re)subscribing is read again now
                while True:
                    await channels.get()
                    nudge.set()
        except (RedisError, OSError) as exc:
            log.warning("repository channel lost (%s); checking at each heartbeat", exc)
            await asyncio.sleep(1.0)
