"""Logging: plain text for a terminal, JSON lines for a log pipeline (``--log-format json``).

One line per request (``inferhub.access``, written by ``hub/middleware/request_log.py``) and one
per job transition (``inferhub.jobs``). A request's id is stored with every job it submits and
travels with the job to the worker, so that the lines of one request can be found across hub
and worker processes.

Ids reach the lines through a context variable: any line logged while a request (hub) or a job
(worker) is being handled carries ``request_id`` and ``job_id``. This module imports only the
standard library and orjson.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Callable, Mapping, MutableMapping
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from typing import IO, Any

import orjson

ACCESS = logging.getLogger("inferhub.access")
JOBS = logging.getLogger("inferhub.jobs")

# fields a text line shows after the message; a JSON line carries every extra field
CONTEXT_FIELDS = ("request_id", "job_id")

_context: ContextVar[MutableMapping[str, Any] | None] = ContextVar("inferhub_log", default=None)

# the attributes every LogRecord has; anything else was passed with ``extra=``
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "color_message"}


# --- ids -------------------------------------------------------------------------------------


def current_request_id() -> str | None:
    """The id of the request (hub) or of the job's request (worker) being handled, if any."""
    context = _context.get()
    return context.get("request_id") if context else None


def bound(**fields: Any) -> _Bound:
    """Lines logged inside carry ``fields`` (a fresh context, so concurrent tasks stay apart)."""
    return _Bound({k: v for k, v in fields.items() if v is not None})


class _Bound:
    """``bound``'s context manager: a small object, not a generator, since a WebSocket's
    request keeps one for as long as it is open."""

    __slots__ = ("_fields", "_token")

    def __init__(self, fields: MutableMapping[str, Any]) -> None:
        self._fields = fields
        self._token: Token[MutableMapping[str, Any] | None] | None = None

    def __enter__(self) -> MutableMapping[str, Any]:
        self._token = _context.set(self._fields)
        return self._fields

    def __exit__(self, *_: object) -> None:
        assert self._token is not None
        _context.reset(self._token)


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        context = _context.get()
        if context:
            for name, value in context.items():
                if not name.startswith("_") and not hasattr(record, name):
                    setattr(record, name, value)
        return True


# --- formats ---------------------------------------------------------------------------------


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {
        k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")
    }


class TextFormatter(logging.Formatter):
    """``2026-11-02 10:00:00,123 INFO inferhub.jobs: job queued request_id=... job_id=...``"""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self._second = (-1, "")  # the last second formatted, and its text

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return self._clock(record.created, record.msecs)

    def _clock(self, created: float, msecs: float) -> str:
        # a second's text is made once, not for each of its lines
        second = int(created)
        if second != self._second[0]:
            self._second = (second, time.strftime("%Y-%m-%d %H:%M:%S", self.converter(second)))
        return f"{self._second[1]},{int(msecs):03d}"

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ids = " ".join(
            f"{k}={v}" for k in CONTEXT_FIELDS if (v := getattr(record, k, None)) is not None
        )
        if not ids:
            return line
        head, newline, trace = line.partition("\n")  # keep a traceback below the ids
        return f"{head} {ids}{newline}{trace}"

    def line(self, created: float, name: str, message: str, fields: Mapping[str, Any]) -> str:
        """An INFO line of ``name`` as ``format`` writes its record (``job_line``)."""
        head = f"{self._clock(created, _msecs(created))} INFO {name}: {message}"
        ids = [f" {k}={v}" for k in CONTEXT_FIELDS if (v := fields.get(k)) is not None]
        return head + "".join(ids) if ids else head


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts`` (ISO 8601, UTC), ``level``, ``logger``, ``message``,
    the context ids and every ``extra`` field; ``exc`` holds a traceback."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update(_extras(record))
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        elif record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(line, default=str).decode()

    def line(self, created: float, name: str, message: str, fields: Mapping[str, Any]) -> str:
        """An INFO line of ``name`` as ``format`` writes its record (``job_line``)."""
        head = {
            "ts": datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds"),
            "level": "info",
            "logger": name,
            "message": message,
        }
        return orjson.dumps(head | dict(fields), default=str).decode()


def _msecs(created: float) -> float:
    return int((created - int(created)) * 1000) + 0.0  # as LogRecord makes it


class _TurnWriter(logging.StreamHandler):  # type: ignore[type-arg]  # generic in typeshed only
    """Writes the lines logged in one turn of the running event loop in one write, at the
    turn's end (a job's lines cost no system call each); at once where no loop runs."""

    def __init__(self, stream: IO[str]) -> None:
        super().__init__(stream)
        self._lines: list[str] = []
        self._due = False
        # an INFO line made without a record (``job_line``), by one of this module's formatters
        self.line: Callable[[float, str, str, Mapping[str, Any]], str] | None = None

    def setFormatter(self, fmt: logging.Formatter | None) -> None:
        super().setFormatter(fmt)
        self.line = fmt.line if isinstance(fmt, TextFormatter | JsonFormatter) else None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self.add(line)

    def add(self, line: str) -> None:
        """Write ``line`` with the others of this turn."""
        self._lines.append(line + self.terminator)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # a thread of its own, or no loop
            self.flush()
            return
        if not self._due:
            self._due = True
            loop.call_soon(self.flush)

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]  # created with the handler
            self._due = False
            if self._lines:
                text = "".join(self._lines)
                self._lines.clear()
                self.stream.write(text)
            self.stream.flush()


def handler(log_format: str = "text", stream: IO[str] | None = None) -> logging.Handler:
    """A handler writing ``log_format`` ("text" or "json") lines, with the context ids."""
    if log_format not in ("text", "json"):
        raise ValueError(f"log format {log_format!r}: use 'text' or 'json'")
    out = _TurnWriter(stream or sys.stderr)
    out.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    out.addFilter(_ContextFilter())
    return out


def job_line(message: str, **fields: Any) -> None:
    """``JOBS.info(message, extra=fields)``: a job's line on its hot path (``info_line``)."""
    info_line(JOBS, message, fields)


def info_line(logger: logging.Logger, message: str, fields: dict[str, Any]) -> None:
    """``logger.info(message, extra=fields)`` on a hot path (a job's lines, a request's access
    line). Where ``setup``'s handler is the line's only way out, the line is written to it as
    its formatter would write the record, with the context's ids, and no record is made,
    filtered or dispatched (a text line: 28 µs through ``logging`` on this project's 2-core
    machine, 10.5 here); else (a test's ``caplog``, handlers of one's own) it goes through
    ``logging`` as ever."""
    if not logger.isEnabledFor(logging.INFO):
        return
    out = _sole_handler(logger)
    if out is None or out.line is None:
        logger.info(message, extra=fields)
        return
    context = _context.get()
    if context:  # as _ContextFilter adds them: what the extra fields do not say already
        for name, value in context.items():
            if name not in fields and not name.startswith("_") and name not in _STANDARD:
                fields[name] = value
    out.add(out.line(time.time(), logger.name, message, fields))


def _sole_handler(logger: logging.Logger) -> _TurnWriter | None:
    """The handler ``handler`` made, if it alone takes the INFO lines of ``logger`` as it made
    it (its context filter, one of its two formatters); else None."""
    if logger.disabled or logger.filters:
        return None
    found: _TurnWriter | None = None
    current: logging.Logger | None = logger
    while current is not None:
        for out in current.handlers:
            if found is not None or type(out) is not _TurnWriter or out.level > logging.INFO:
                return None
            if out.line is None or len(out.filters) != 1:
                return None
            if type(out.filters[0]) is not _ContextFilter:
                return None
            found = out
        current = current.parent if current.propagate else None
    return found


def setup(log_format: str = "text", level: int | str = logging.INFO) -> None:
    """Send every logger's lines to stderr in ``log_format`` ("text" or "json")."""
    # what no line shows is not gathered for each (the logging HOWTO's "Optimization"): the
    # caller's frame, thread and process; a job's lines cost a few microseconds fewer each
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    new = handler(log_format)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(new)
    root.setLevel(level)
    # uvicorn's own lines go through the root handler; its access log is replaced by ours
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True


# --- the request line ------------------------------------------------------------------------


def note_job(job_id: str) -> None:
    """Remember that the current request submitted ``job_id``: its access line names it
    (``job_id``, or ``job_ids`` when a WebSocket submitted several)."""
    context = _context.get()
    if context is not None:
        jobs = context.setdefault("_jobs", [])
        if len(jobs) < 100:
            jobs.append(job_id)


def request_jobs() -> list[str]:
    """The jobs the current request submitted so far."""
    context = _context.get()
    return list(context.get("_jobs", ())) if context else []
