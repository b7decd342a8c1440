"""The README and docs/*.md as a newcomer pastes them, in order: the README's Start brings the
stack up (``inferhub up``, as it is written), then every shell and Python block runs against it
and must print what the block after it shows (tests/readme.py compares, allowing for ids, times
and ``…``). Only blocks marked ``<!-- illustrative … -->`` are skipped.

The documents' hub is on ports 8000 (HTTP) and 8001 (gRPC); here on free ports, and every
``:8000`` and ``:8001`` of a block and of what it shows is read as those (the CLI's default URL
too, by ``INFERHUB_URL``).
Blocks run in a copy of the clone (its files linked, ``.venv`` the running one), each shell
block in a new ``bash`` whose ``PATH`` starts with ``.venv/bin``, as after the README's
``source .venv/bin/activate``, in an 80-column terminal.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import ROOT, wait_for
from readme import Block, blocks, console, shows

from cli.processes import free_port

DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
START = "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/inferhub up"
BLOCK_TIMEOUT_S = 30


@dataclass
class Stack:
    port: int
    grpc_port: int
    clone: Path
    env: dict[str, str]
    started: str  # what `inferhub up` printed until it said it is up

    def local(self, text: str) -> str:
        return text.replace(":8000", f":{self.port}").replace(":8001", f":{self.grpc_port}")


def _clone(into: Path) -> Path:
    """The repository as a newcomer's clone: its files, and the venv these tests run in."""
    into.mkdir()
    for entry in ROOT.iterdir():
        if entry.name not in (".venv", ".git"):
            (into / entry.name).symlink_to(entry)
    (into / ".venv").symlink_to(sys.prefix)
    return into


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    clone = _clone(tmp_path_factory.mktemp("newcomer") / "inferhub")
    port, grpc_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERHUB_")}
    log_path = clone.parent / "up.log"
    with log_path.open("wb") as log:
        # the Start block's last command; the venv and its install are the ones running here
        up = subprocess.Popen(
            [
                *(str(clone / ".venv" / "bin" / "inferhub"), "up"),
                *("--port", str(port), "--grpc-port", str(grpc_port)),
            ],
            cwd=clone,
            env={**env, "COLUMNS": "80"},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            said = wait_for(
                lambda: _up_said(up, log_path), timeout=60, what="inferhub up to say it is up"
            )
            shell = {
                **env,
                "PATH": f"{clone / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}",
                "VIRTUAL_ENV": str(clone / ".venv"),
                "INFERHUB_URL": f"http://127.0.0.1:{port}",
                "COLUMNS": "80",
            }
            yield Stack(port, grpc_port, clone, shell, said)
        finally:
            up.send_signal(signal.SIGINT)
            up.wait(30)


def _up_said(up: subprocess.Popen[bytes], log: Path) -> str | None:
    text = log.read_text(errors="replace")
    assert up.poll() is None, f"inferhub up exited:\n{text}"
    lines = text.splitlines(keepends=True)
    at = next((i for i, line in enumerate(lines) if "inferhub is up" in line), None)
    return None if at is None else "".join(lines[: at + 1])


def run(stack: Stack, block: Block, code: str) -> str:
    """Run shell or Python ``code`` of ``block``; what it printed on stdout."""
    command = (
        [sys.executable, "-c", code]
        if block.lang == "python"
        else ["bash", "-euo", "pipefail", "-c", code]
    )
    with subprocess.Popen(
        command,
        cwd=stack.clone,
        env=stack.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a block that hangs is ended with all it started
    ) as done:
        try:
            stdout, stderr = done.communicate(timeout=BLOCK_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(done.pid, signal.SIGKILL)
            stdout, stderr = done.communicate()
            # what it printed before it stopped, and what the stack logged: where it waited
            logged = (stack.clone.parent / "up.log").read_text(errors="replace").splitlines()
            raise AssertionError(
                f"{block.where} ran over {BLOCK_TIMEOUT_S} s:\n{code}\nprinted\n{stdout}\n"
                f"and on stderr\n{stderr}\nthe stack's last lines:\n" + "\n".join(logged[-60:])
            ) from None
    said = f"{code}\nprinted\n{stdout}\nand on stderr\n{stderr}"
    assert done.returncode == 0, f"{block.where}: exit {done.returncode}:\n{said}"
    # stdout only: what stderr shows on a terminal (curl's meter, when its output is piped as
    # here) is not part of what the documents show
    return stdout


def check(stack: Stack, block: Block) -> None:
    if block.lang == "console":
        for command, shown in console(block.code):
            printed = run(stack, block, stack.local(command))
            assert shows(stack.local(shown), printed), (
                f"{block.where}: `{command}` printed\n{printed}\nwhere the document shows\n{shown}"
            )
        return
    printed = run(stack, block, stack.local(block.code))
    if block.output is not None:
        assert shows(stack.local(block.output), printed), (
            f"{block.where} printed\n{printed}\nwhere the document shows\n{block.output}"
        )


def test_the_readme_starts_the_stack_as_it_says(stack: Stack) -> None:
    start = blocks(ROOT / "README.md")[0]
    assert start.code == START, "the README's first block is its Start: keep this test with it"
    assert start.output is not None and shows(stack.local(start.output), stack.started), (
        f"inferhub up printed\n{stack.started}\nwhere the README shows\n{start.output}"
    )


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.name)
def test_every_block_runs_and_prints_what_it_shows(stack: Stack, document: Path) -> None:
    found = blocks(document)
    if document.name == "README.md":
        found = found[1:]  # the Start, which brought the stack up
    ran = [block for block in found if not block.illustrative]
    for block in ran:
        check(stack, block)
    skipped = [b.where for b in found if b.illustrative]
    assert ran or skipped, f"{document.name} has no runnable block"


def test_what_a_block_shows_is_matched_strictly_but_for_ids_times_and_elisions() -> None:
    shown = (
        "job b0e2caea02e64153862ca10e95da3ca6 queued (2 rows) at 14:25:21\nid: 1795730823154-0 …"
    )
    printed = "job 0ea03dbee4684ff99dc7128f0d06628c queued (2 rows) at 09:01:02\nid: 1796-3 more"
    assert shows(shown, printed)
    assert not shows(shown, printed.replace("(2 rows)", "(1 row)"))
    assert not shows(shown, printed.replace("queued", "failed"))
    assert not shows("[0]", "[0]\n[1]")  # nothing printed beyond what is shown, without a …
    assert shows('{"a": 1,\n "b": [0.5]}', '{"a":1,"b":[0.5]}')  # JSON as wrapped in the docs
    assert not shows('{"a": 1}', '{"a":2}')
