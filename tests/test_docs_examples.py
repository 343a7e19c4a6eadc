"""Every example of the README and of docs/*.md runs, so that a page that stops working fails.

How a page's examples run (docs/index.md says the same to readers):

- The ```python blocks of a page run one after the other in one namespace, as the page
  reads, in a fresh directory, with a key in ``STOREDSESSION_KEYS`` and
  ``STOREDSESSION_DATABASE_URL`` naming an SQLite file there. They run as an imported
  module (``__name__`` is not ``"__main__"``), so a server started under the usual guard is
  not started; such a block carries ``<!-- example: no-server -->`` on the line before it.
- ``<!-- example: sqlite -->`` before a block: each PostgreSQL or MySQL URL in it is replaced
  by the SQLite one.
- The ```console blocks of a page run in their own fresh directory, in order: every
  ``$ `` line is a command (``$ pip install`` lines are skipped: the packages are here),
  the other lines are what it printed on the author's machine. ``<new>`` and ``<old>``
  stand for two keys, ``<old>`` being the one in ``STOREDSESSION_KEYS``. Every command must
  succeed; after ``<!-- example: output -->`` its output must also be the one shown.
- Anything else (indented listings, ```text) is for reading only.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from storedsession import generate_key

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUN = {"python", "console"}
READ_ONLY = {"", "text", "ini"}
MARKERS = {"no-server", "sqlite", "output"}
MARKER = re.compile(r"^\s*<!-- example: ([a-z-]+(?: [a-z-]+)*) -->\s*$")
FENCE = re.compile(r"^(\s*)```(\S*)\s*$")
SERVER_URL = re.compile(r"\b(?:postgres(?:ql)?|mysql)(?:\+pool)?://[^\s\"'`]+")
SERVER_CALL = re.compile(r"\.run\(|\bserve\(|uvicorn\.run")


@dataclass
class Block:
    page: Path
    line: int  # of the first line of code, 1-based
    lang: str
    code: str
    markers: set[str] = field(default_factory=set)

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """Return the fenced blocks of ``page``, dedented, with the marker line before each."""
    found: list[Block] = []
    lines = page.read_text().split("\n")
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, lang = opening.groups()
        marker = MARKER.match(lines[i - 1]) if i else None
        end = i + 1
        while not re.match(rf"^{indent}```\s*$", lines[end]):
            end += 1
        code = "\n".join(line[len(indent) :] for line in lines[i + 1 : end]) + "\n"
        markers = set(marker.group(1).split()) if marker else set()
        found.append(Block(page, i + 2, lang, code, markers))
        i = end + 1
    return found


def examples(lang: str) -> list[pytest.param]:
    params = []
    for page in PAGES:
        if any(block.lang == lang for block in blocks(page)):
            params.append(pytest.param(page, id=str(page.relative_to(ROOT))))
    return params


@pytest.fixture
def keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    """Work in a fresh directory with an SQLite URL and a key; return (new, old) keys."""
    old, new = generate_key(), generate_key()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("STOREDSESSION_KEYS", old)
    monkeypatch.setenv("STOREDSESSION_DATABASE_URL", sqlite_url(tmp_path))
    return new, old


def sqlite_url(directory: Path) -> str:
    return f"sqlite:///{directory}/sessions.db"


def test_every_block_is_run_or_plainly_for_reading() -> None:
    for page in PAGES:
        for block in blocks(page):
            assert block.lang in RUN | READ_ONLY, (
                f"{block.where}: a ```{block.lang} block; shell examples are ```console (run) "
                "or ```text (read only), Python ones ```python"
            )
            assert block.markers <= MARKERS, f"{block.where}: unknown marker {block.markers}"
            if block.lang == "python":
                starts_a_server = bool(SERVER_CALL.search(block.code))
                assert starts_a_server == ("no-server" in block.markers), (
                    f"{block.where}: a block that starts a server, and only such a block, "
                    "is marked <!-- example: no-server --> and keeps the call under "
                    'if __name__ == "__main__":'
                )
            if block.lang == "console":
                typed = "\n".join(command for command, _ in commands(block))
                assert "sqlite" in block.markers or not SERVER_URL.search(typed), (
                    f"{block.where}: a command with a server URL needs <!-- example: sqlite -->"
                )


def test_enough_examples_are_found() -> None:
    """The parser finding nothing would pass every other test: count what it finds."""
    every = [block for page in PAGES for block in blocks(page)]
    python = [block for block in every if block.lang == "python"]
    commands = [
        line
        for block in every
        if block.lang == "console"
        for line in block.code.splitlines()
        if line.startswith("$ ") and not line.startswith("$ pip ")
    ]
    assert len(python) >= 10 and len(commands) >= 15, (len(python), len(commands))


@pytest.mark.parametrize("page", examples("python"))
def test_python_examples_run(page: Path, keys: tuple[str, str], tmp_path: Path) -> None:
    namespace: dict[str, object] = {"__name__": "docs_example"}
    for block in blocks(page):
        if block.lang != "python":
            continue
        code = block.code
        if "sqlite" in block.markers:
            code = SERVER_URL.sub(sqlite_url(tmp_path), code)
        # Padding keeps the page's own line numbers in a traceback.
        exec(compile("\n" * (block.line - 1) + code, str(block.page), "exec"), namespace)


def commands(block: Block) -> list[tuple[str, list[str]]]:
    """Return the block's commands, each with the lines shown as its output."""
    found: list[tuple[str, list[str]]] = []
    for line in block.code.rstrip("\n").split("\n"):
        if line.startswith("$ "):
            found.append((line[2:], []))
        elif found:
            found[-1][1].append(line)
    return [(command, shown) for command, shown in found if not command.startswith("pip ")]


@pytest.mark.parametrize("page", examples("console"))
def test_console_examples_run(page: Path, keys: tuple[str, str], tmp_path: Path) -> None:
    new, old = keys
    environ = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    for block in blocks(page):
        if block.lang != "console":
            continue
        steps = commands(block)
        script = ["set -euo pipefail"]
        for command, _ in steps:
            command = command.replace("<new>", new).replace("<old>", old)
            if "sqlite" in block.markers:
                command = SERVER_URL.sub(sqlite_url(tmp_path), command)
            script += ["printf '\\036\\n'", command]
        ran = subprocess.run(
            ["bash", "-c", "\n".join(script)],
            cwd=tmp_path,
            env=environ,
            capture_output=True,
            text=True,
            timeout=120,
        )
        outputs = ran.stdout.split("\x1e\n")[1:]
        assert ran.returncode == 0, (
            f"{block.where}: `{steps[len(outputs) - 1][0]}` failed ({ran.returncode}): {ran.stderr}"
        )
        if "output" in block.markers:
            for (command, shown), output in zip(steps, outputs, strict=True):
                assert output.rstrip("\n").split("\n") == shown, f"{block.where}: {command}"


def contributing_test_command() -> str:
    lines = (ROOT / "docs" / "contributing.md").read_text().split("\n")
    return lines[lines.index("<!-- test-command -->") + 1].strip()


def test_the_readme_shows_the_test_command_ci_runs() -> None:
    """.ci/run reads the line under the marker of docs/contributing.md; the README shows it."""
    command = contributing_test_command()
    assert command.startswith("python3 -m venv .venv && ")
    readme = [line.strip() for line in (ROOT / "README.md").read_text().split("\n")]
    assert command in readme


def slug(heading: str) -> str:
    """Return the anchor Python-Markdown's toc gives a heading (its default slugify)."""
    text = re.sub(r"[^\w\s-]", "", heading.replace("`", "")).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def anchors(page: Path) -> set[str]:
    found, fenced = set(), False
    for line in page.read_text().split("\n"):
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced and (heading := re.match(r"^#+ (.*)$", line)):
            found.add(slug(heading.group(1)))
    return found


def test_the_readmes_links_into_the_docs_resolve() -> None:
    """mkdocs checks the docs' own links; the README, the PyPI page, is checked here."""
    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)#]+)(?:#([^)]+))?\)", readme)
    local = [(target, anchor) for target, anchor in links if "://" not in target]
    assert local
    for target, anchor in local:
        path = ROOT / target
        assert path.exists(), target
        if anchor:
            assert anchor in anchors(path), f"{target}#{anchor}"
