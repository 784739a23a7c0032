"""The README's Python examples run as written."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def _python_blocks() -> list[tuple[str, str]]:
    """(the heading above it, the code) of every ```python block."""
    blocks, heading = [], "top"
    for match in re.finditer(
        r"^(#+ [^\n]*)$|^```python\n(.*?)^```", README.read_text(), re.M | re.S
    ):
        if match[1]:
            heading = match[1].lstrip("# ").strip()
        else:
            blocks.append((heading, match[2]))
    return blocks


BLOCKS = _python_blocks()


def test_the_readme_has_examples():
    assert len(BLOCKS) >= 5


@pytest.mark.parametrize("code", [code for _, code in BLOCKS], ids=[h for h, _ in BLOCKS])
def test_readme_example_runs(code):
    if "init_process_group" in code:
        pytest.skip("needs torchrun's processes: tests/test_distributed.py runs the same steps")
    if "transformers" in code and importlib.util.find_spec("transformers") is None:
        pytest.skip("transformers is not installed")
    namespace: dict[str, object] = {}
    exec(compile("import torch, glu_fused\n" + code, str(README), "exec"), namespace)
