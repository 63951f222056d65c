"""The code examples of a markdown page (README.md, docs/*.md), extracted so that tests run them.

A fenced block is run unless the line just above its opening fence is the comment
``<!-- not run: REASON -->`` (invisible on the rendered page; the reason is required). The
python blocks of one page run in order in one namespace, as a reader would paste them. In
``bash`` blocks, the lines that call ``latentgrad`` are the commands (``\\`` continuations
joined, comments dropped); ``make`` lines name Makefile targets.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_FENCE = re.compile(r"^```(?P<lang>[\w+-]*)[^\n]*\n(?P<code>.*?)^```[ \t]*$", flags=re.M | re.S)
_NOT_RUN = re.compile(r"<!--\s*not run:\s*(?P<reason>.*?)\s*-->\s*$")


@dataclass(frozen=True)
class CodeBlock:
    """One fenced block of a markdown page."""

    path: Path
    lang: str
    code: str
    line: int  # line number of the first code line (1-based)
    not_run: str | None  # the reason given in a ``<!-- not run: ... -->`` marker, if any

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"


def code_blocks(path: Path, lang: str | None = None) -> list[CodeBlock]:
    """The fenced blocks of ``path`` (only those in language ``lang`` when given)."""
    text = path.read_text()
    blocks = []
    for match in _FENCE.finditer(text):
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        marker = _NOT_RUN.search(before)
        block = CodeBlock(
            path=path,
            lang=match["lang"],
            code=match["code"],
            line=text.count("\n", 0, match.start("code")) + 1,
            not_run=marker["reason"] if marker else None,
        )
        if lang is None or block.lang == lang:
            blocks.append(block)
    return blocks


def run_python_blocks(path: Path) -> int:
    """Run the python blocks of ``path`` in order in one namespace; return how many ran."""
    namespace: dict[str, object] = {"__name__": f"markdown_example_{path.stem}"}
    ran = 0
    for block in code_blocks(path, "python"):
        if block.not_run is not None:
            continue
        # Leading newlines keep the page's line numbers in tracebacks.
        source = "\n" * (block.line - 1) + block.code
        exec(compile(source, str(path), "exec"), namespace)
        ran += 1
    return ran


def shell_lines(block: CodeBlock) -> list[str]:
    """The block's commands: ``\\`` continuations joined, comments and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", block.code)
    lines = []
    for raw in joined.splitlines():
        words = shlex.split(raw, comments=True)
        if words:
            lines.append(shlex.join(words))
    return lines


def latentgrad_commands(block: CodeBlock) -> list[list[str]]:
    """The arguments of each ``latentgrad ...`` command in a shell block."""
    return [shlex.split(line)[1:] for line in shell_lines(block) if line.startswith("latentgrad ")]


def make_targets(text: str) -> list[str]:
    """The targets of the ``make TARGET`` commands quoted in ``text``."""
    return re.findall(r"^\s*make (\w+)", text, flags=re.M)


def run_latentgrad(args: list[str], cwd: Path, timeout: float = 300) -> None:
    """Run ``latentgrad ARGS`` in a fresh interpreter in ``cwd``; fail with its output."""
    proc = subprocess.run(
        [sys.executable, "-m", "latentgrad.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, (
        f"latentgrad {shlex.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    )
