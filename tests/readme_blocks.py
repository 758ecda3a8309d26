"""The fenced code blocks of a markdown file, for the tests that run them as written.

A block runs unless the line before its opening fence (blank lines aside) is a marker
``<!-- readme-test: skip (why) -->``: the reason is shown to the reader's eye only in the
prose, so the marker says it again for the test. Blocks without a language or marked
``text`` are layouts or output, never run. Fences may be indented (a block inside a list
item); the indent is removed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

SKIP_MARKER = "<!-- readme-test: skip"
#: The languages a test runs; any other block must be ``text``, bare, or marked.
RUNNABLE = ("bash", "python")

_FENCE = re.compile(
    r"^(?P<indent>[ \t]*)```(?P<lang>[\w-]*)[ \t]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$",
    re.S | re.M,
)


@dataclass(frozen=True, slots=True)
class Block:
    """One fenced block of a markdown file."""

    lang: str
    """Its language tag (``""`` when it has none)."""
    code: str
    """Its text, without the fence's indent."""
    line: int
    """Line number (from 1) of its opening fence."""
    skip: str | None
    """The skip marker before it, or ``None`` when it runs."""


def code_blocks(path: Path) -> list[Block]:
    """Every fenced block of ``path``, in order."""
    text = Path(path).read_text()
    blocks = []
    for m in _FENCE.finditer(text):
        before = text[: m.start()].rstrip().splitlines()
        marker = before[-1].strip() if before else ""
        indent = m["indent"]
        lines = m["body"].splitlines(keepends=True)
        code = "".join(ln[len(indent) :] if ln.startswith(indent) else ln for ln in lines)
        skip = marker if marker.startswith(SKIP_MARKER) else None
        blocks.append(Block(m["lang"], code, text.count("\n", 0, m.start()) + 1, skip))
    return blocks


def python_blocks(path: Path) -> list[str]:
    """The Python blocks that run, in order."""
    return [b.code for b in code_blocks(path) if b.lang == "python" and b.skip is None]


def shell_script(path: Path) -> str:
    """The runnable blocks of ``path`` as one bash script, in order: bash blocks as they
    are, each Python block fed to ``python`` on its standard input (so it sees what the
    blocks before it exported). Each command is echoed to stderr (``set -x``)."""
    parts = ["set -euxo pipefail"]
    for b in code_blocks(path):
        if b.skip is not None or b.lang not in RUNNABLE:
            continue
        parts.append(f"# --- {Path(path).name}, line {b.line} ({b.lang})")
        if b.lang == "bash":
            parts.append(b.code)
        else:
            parts.append(f"python - <<'README_PYTHON_BLOCK'\n{b.code}README_PYTHON_BLOCK")
    return "\n".join(parts) + "\n"
