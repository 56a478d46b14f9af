"""Every code block of README.md, and of the docs pages in PAGES, runs as written.

The pages (``PAGES``) are read in order, README.md first, then docs/tiny-model.md,
docs/learning.md, docs/benchmarks.md and docs/alpha.md; a snippet's id names its page and
line (``README.md:120``, ``docs/tiny-model.md:107``). A block that needs what an earlier block
made must come after it in that order.

A ```python block runs as one script; each line of a ```bash block runs as one command
(``#`` comments are shell comments). They run in page order, from a scratch folder that
mirrors the repository root (its entries symlinked, a fresh ``data/``), with the venv
activated (its ``bin/`` first on PATH, as ``source .venv/bin/activate`` does) and
``HF_HUB_OFFLINE=1``. The app the README starts with ``python app.py`` is started once, on
a free loopback port, with that ``data/``; a snippet's ``http://127.0.0.1:7860/`` is that app.

What the tests do not run is marked in the page by an HTML comment above the block, with
the reason; pytest's summary (``-ra``) lists every skip and its reason:

    <!-- snippet: skip (reason) -->                 the whole block
    <!-- snippet: skip-line "TEXT" (reason) -->     the block's lines containing TEXT
    <!-- snippet: replace "OLD" "NEW" (reason) -->  run the block with OLD replaced by NEW

Blocks without a language (the layout tree) are not code. A marker that matches nothing
fails the tests, so markers cannot outlive the text they were written for.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import ROOT, TINY

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # starts the real app or process

README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, DOCS / "tiny-model.md", DOCS / "learning.md", DOCS / "benchmarks.md", DOCS / "alpha.md"]
APP_URL = "http://127.0.0.1:7860/"
RUNNABLE = {"python", "bash"}
MARKER = re.compile(r'^<!--\s*snippet:\s*(skip|skip-line|replace)\s+(.*?)\s*-->\s*$')
ARGS = re.compile(r'^((?:"[^"]*"\s*)*)\((.+)\)$')
TIMEOUT = 600  # generous: a loaded 2-core machine is much slower than the seconds these take


@dataclass
class Block:
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    markers: list[tuple[str, list[str], str]] = field(default_factory=list)  # (kind, quoted args, reason)


@dataclass
class Snippet:
    id: str
    lang: str
    code: str
    skip: str | None = None


def page_name(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


def parse_blocks(text: str, name: str = "README.md") -> list[Block]:
    blocks, markers, lines = [], [], text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        m = MARKER.match(line.strip())
        if m:
            args = ARGS.match(m.group(2))
            if not args:
                raise ValueError(f"{name}:{i + 1}: a snippet marker needs its arguments in quotes and a (reason)")
            markers.append((m.group(1), re.findall(r'"([^"]*)"', args.group(1)), args.group(2)))
        elif line.startswith("```"):
            lang, start = line[3:].strip(), i
            i += 1
            body = []
            while not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            blocks.append(Block(start + 1, lang, "\n".join(body) + "\n", markers))
            markers = []
        elif line.strip():
            if markers:
                raise ValueError(f"{name}:{i + 1}: a snippet marker must be right above a code block")
        i += 1
    return blocks


def snippets(blocks: list[Block], name: str = "README.md") -> list[Snippet]:
    out = []
    for b in blocks:
        if b.lang not in RUNNABLE:
            if b.lang and b.markers:
                raise ValueError(f"{name}:{b.line}: markers on a {b.lang} block")
            continue
        code, skip_all, skip_lines = b.code, None, []
        for kind, args, reason in b.markers:
            if kind == "skip":
                skip_all = reason
            elif kind == "skip-line":
                assert len(args) == 1 and args[0] in code, f"{name}:{b.line}: skip-line {args} matches no line"
                skip_lines.append((args[0], reason))
            else:
                assert len(args) == 2 and args[0] in code, f"{name}:{b.line}: replace {args} matches nothing"
                code = code.replace(args[0], args[1])
        if b.lang == "python":
            out.append(Snippet(f"{name}:{b.line}", "python", code, skip_all))
            continue
        for k, line in enumerate(code.splitlines(), start=1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            why = skip_all or next((r for text, r in skip_lines if text in line), None)
            out.append(Snippet(f"{name}:{b.line + k}", "bash", line, why))
    return out


def page_snippets(page: Path) -> list[Snippet]:
    name = page_name(page)
    return snippets(parse_blocks(page.read_text(encoding="utf-8"), name), name)


SNIPPETS = [s for page in PAGES for s in page_snippets(page)]


def test_the_readme_has_the_snippets_it_promises():
    kinds = [(s.lang, s.skip is None) for s in SNIPPETS]
    assert ("python", True) in kinds and ("bash", True) in kinds
    readme = [s for s in SNIPPETS if s.id.startswith("README.md:")]
    assert any(APP_URL in s.code for s in readme if s.skip is None)  # the API example runs


def test_the_readme_links_every_page_whose_snippets_run():
    text = README.read_text(encoding="utf-8")
    for page in PAGES[1:]:
        assert f"]({page_name(page)})" in text, f"README.md does not link {page_name(page)}"


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """A folder that looks like the repository root (entries symlinked), with its own data/."""
    root = tmp_path_factory.mktemp("readme")
    for entry in ROOT.iterdir():
        if entry.name not in {"data", ".git", ".pytest_cache"} and not (root / entry.name).exists():
            (root / entry.name).symlink_to(entry)
    return root


@pytest.fixture(scope="module")
def app(scratch):
    from app.server import AppServer

    with AppServer(TINY, scratch / "data", log_path=scratch.parent / "readme-app.log", timeout=300) as server:
        yield server


@pytest.fixture(scope="module")
def env():
    venv_bin = str(Path(sys.executable).parent)
    return {
        **os.environ, "PATH": venv_bin + os.pathsep + os.environ.get("PATH", ""), "VIRTUAL_ENV": str(Path(venv_bin).parent),
        "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1", "PYTHONPATH": "",
    }


@pytest.mark.slow
@pytest.mark.parametrize("snippet", SNIPPETS, ids=[s.id for s in SNIPPETS])
def test_readme_snippet_runs(snippet: Snippet, scratch, env, request):
    if snippet.skip:
        pytest.skip(f"{snippet.id} not run: {snippet.skip}")
    app = request.getfixturevalue("app")  # every snippet may use data/, the app's store
    code = snippet.code.replace(APP_URL, app.url)
    if snippet.lang == "python":
        script = scratch / ("snippet_" + re.sub(r"[^A-Za-z0-9]+", "_", snippet.id) + ".py")
        script.write_text(code, encoding="utf-8")
        cmd = ["python", script.name]
    else:
        cmd = ["bash", "-c", code]
    done = subprocess.run(cmd, cwd=scratch, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, f"{snippet.id} failed ({done.returncode}):\n{code}\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
