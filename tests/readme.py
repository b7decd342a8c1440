"""The code blocks of a Markdown document, as a newcomer reads them: what to run (``sh``,
``bash``, ``console``, ``python``), what it should print (an untagged, ``text`` or ``json`` block
right after), and which blocks say they only illustrate (``<!-- illustrative … -->`` just
before). ``shows`` compares what ran with what the document shows."""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path

RUNNABLE = {"sh", "bash", "console", "python"}
OUTPUT = {"", "text", "json"}
ILLUSTRATIVE = "<!-- illustrative"
_FENCE = re.compile(r"^(\s*)```(\w*)\s*$")


@dataclass
class Block:
    path: Path
    line: int  # where its fence opens, 1-based
    lang: str
    code: str
    illustrative: bool = False
    output: str | None = None  # what the document shows it prints

    @property
    def where(self) -> str:
        return f"{self.path.name}:{self.line}"


def blocks(path: Path) -> list[Block]:
    """Every fenced block of ``path``; a runnable one carries the output block after it."""
    lines = path.read_text().splitlines()
    found: list[tuple[Block, int]] = []  # each block with the line after its closing fence
    i = 0
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        indent, lang = fence.groups()
        end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
        code = "\n".join(line.removeprefix(indent) for line in lines[i + 1 : end])
        before = [line.strip() for line in lines[:i] if line.strip()]
        marked = bool(before) and before[-1].startswith(ILLUSTRATIVE)
        found.append((Block(path, i + 1, lang, code, marked), end + 1))
        i = end + 1
    for (block, after), (following, _) in itertools.pairwise(found):
        between = lines[after : following.line - 1]
        if (
            block.lang in RUNNABLE
            and following.lang in OUTPUT
            and not any(s.strip() for s in between)
        ):
            block.output = following.code
    return [b for b, _ in found if b.lang in RUNNABLE]


def console(code: str) -> list[tuple[str, str]]:
    """A ``console`` block's ``$`` commands (with ``\\`` continuations), each with the output
    shown under it."""
    pairs: list[tuple[str, str]] = []
    command: list[str] | None = None
    shown: list[str] = []
    for line in code.splitlines():
        if command is not None and command[-1].endswith("\\"):
            command.append(line)
        elif line.startswith("$ "):
            if command is not None:
                pairs.append(("\n".join(command), "\n".join(shown)))
            command, shown = [line.removeprefix("$ ")], []
        else:
            shown.append(line)
    if command is not None:
        pairs.append(("\n".join(command), "\n".join(shown)))
    return pairs


# What changes from run to run, as the documents write it and as it is matched.
_VOLATILE = [
    (r"[0-9a-f]*…", r".*?"),  # an elision (with the start of the id it shortens)
    (r"[0-9a-f]{32}", r"[0-9a-f]{32}"),  # a job id
    (r"ih_[0-9a-f]{8}_[\w-]+", r"ih_[0-9a-f]{8}_[\w-]+"),  # an API key
    (r"whsec_[\w+/=]+", r"whsec_[\w+/=]+"),  # a webhook secret
    (r"\d{13}-\d+", r"\d+-\d+"),  # an event id
    (r"1[6-9]\d{8}(?:\.\d+)?", r"\d+(?:\.\d+)?"),  # a unix time
    (r"\d{1,2}:\d\d:\d\d", r"\d{1,2}:\d\d:\d\d"),  # a clock time, a time elapsed
    (r"\s+", r"\s*"),  # line breaks and padding: JSON wrapped, tables and text re-wrapped
]
_TOKEN = re.compile("|".join(f"({pattern})" for pattern, _ in _VOLATILE))


def pattern(shown: str) -> re.Pattern[str]:
    """What ``shown`` (a document's output block) matches."""
    parts: list[str] = []
    at = 0
    for match in _TOKEN.finditer(shown.strip()):
        parts.append(re.escape(shown.strip()[at : match.start()]))
        parts.append(_VOLATILE[match.lastindex - 1][1])  # type: ignore[operator]
        at = match.end()
    parts.append(re.escape(shown.strip()[at:]))
    return re.compile("".join(parts), re.DOTALL)


def shows(shown: str, printed: str) -> bool:
    """Whether ``printed`` is what ``shown`` shows: the same text, but for what changes from run
    to run (ids, times), whitespace, and what ``…`` leaves out."""
    return pattern(shown).fullmatch(printed.strip()) is not None
