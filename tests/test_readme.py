"""The runnable command blocks of the README and of docs/*.md run as written, so they cannot rot.

A block is runnable when the line before its opening fence is ``<!-- runnable: tiny -->``
(default suite; the block must take seconds) or ``<!-- runnable: tiny, slow -->`` (minutes:
``pytest -m slow``). Each block runs as one ``bash -e`` script in a fresh directory (outputs such
as ``runs/`` land there, not in the checkout), with this interpreter first on ``PATH`` as
``python`` and the checkout on ``PYTHONPATH``.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MARKER = re.compile(
    r"^<!-- runnable: (?P<tags>[a-z, ]+) -->\n```bash\n(?P<body>.*?)^```", re.M | re.S
)


def runnable_blocks(text: str) -> list[tuple[str, set[str], int]]:
    """``(script, tags, line number)`` for every marked block in ``text``."""
    return [
        (
            m["body"],
            {t.strip() for t in m["tags"].split(",")},
            text.count("\n", 0, m.start()) + 1,
        )
        for m in MARKER.finditer(text)
    ]


DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCKS = [
    (body, tags, f"{path.relative_to(ROOT)}:{line}")
    for path in DOCS
    for body, tags, line in runnable_blocks(path.read_text())
]


def test_the_docs_have_runnable_blocks_and_every_marker_is_read():
    for path in DOCS:
        text = path.read_text()
        markers = re.findall(r"^<!-- runnable:", text, re.M)  # prose may quote the marker
        assert len(runnable_blocks(text)) == len(markers), path
    readme = runnable_blocks((ROOT / "README.md").read_text())
    assert any("slow" not in tags for _, tags, _ in readme)  # the README's run by default
    assert len(BLOCKS) >= 3


def test_runnable_blocks_finds_tags_and_bodies():
    text = (
        "x\n<!-- runnable: tiny, slow -->\n```bash\npython -m a \\\n  --tiny\n```\n```bash\nno\n```"
    )
    assert runnable_blocks(text) == [("python -m a \\\n  --tiny\n", {"tiny", "slow"}, 2)]


@pytest.mark.parametrize(
    "script",
    [
        pytest.param(b, marks=[pytest.mark.slow] if "slow" in tags else [], id=where)
        for b, tags, where in BLOCKS
    ],
)
def test_readme_block_runs(script, tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    wrapper = bindir / "python"  # this interpreter (and its venv) as the README's `python`
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    wrapper.chmod(0o755)
    env = dict(os.environ)
    env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}"
    r = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, (
        f"README block failed ({r.returncode}):\n{script}\n{r.stdout}\n{r.stderr}"
    )
