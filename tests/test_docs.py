"""Every Python example in the README and docs/ runs as written (the blocks of one
file in order, sharing their names, as a reader would paste them)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# pages whose examples train for tens of seconds run in the slow tier
SLOW = {"cifar.md", "spin.md"}
DOCS = [pytest.param(p, marks=pytest.mark.slow) if p.name in SLOW else p for p in DOCS]


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_examples_run(path, tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", path.read_text(), re.S)
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__doc_example__"}
    for i, code in enumerate(blocks):
        exec(compile(code, f"<{path.name} example {i}>", "exec"), namespace)
