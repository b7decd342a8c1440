"""Loaded at start-up by every Python process of a bench stack run with ``--gc-stats`` (this
folder goes first on their ``PYTHONPATH``): records each garbage collection's end time,
generation and duration through ``gc.callbacks``, and writes them at exit, with the count of
objects frozen out of the collector's scans, to ``$INFERHUB_GC_STATS_DIR/<pid>.json``. uvicorn
ends the hub by raising again the SIGTERM it caught, which skips ``atexit``: this module's
handler, which uvicorn restores, writes first. A module of its own, not code in the hub, so
that the hub measured is the hub as served."""

import atexit
import gc
import json
import os
import signal
import time
from types import FrameType

_DIR = os.environ.get("INFERHUB_GC_STATS_DIR")
_records: list[tuple[float, int, float]] = []  # (end, wall clock; generation; seconds)
_started = 0.0


def _on_gc(phase: str, info: dict[str, int]) -> None:
    global _started
    if phase == "start":
        _started = time.perf_counter()
    else:
        _records.append((time.time(), info["generation"], time.perf_counter() - _started))


def _write() -> None:
    with open(os.path.join(_DIR or "", f"{os.getpid()}.json"), "w") as out:
        json.dump({"frozen": gc.get_freeze_count(), "collections": _records}, out)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    _write()
    signal.signal(signum, signal.SIG_DFL)
    signal.raise_signal(signum)


if _DIR:
    gc.callbacks.append(_on_gc)
    atexit.register(_write)
    signal.signal(signal.SIGTERM, _on_sigterm)
