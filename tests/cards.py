"""Reading a model card back the way the Hub does (`huggingface_hub.ModelCard`), for the tests of the
commands that save model folders."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest


def read_card(folder: str | Path) -> tuple[dict[str, Any], str]:
    """(metadata, body) of `folder`/README.md as `huggingface_hub` parses them."""
    from huggingface_hub import ModelCard

    card = ModelCard.load(Path(folder) / "README.md")
    return card.data.to_dict(), card.text


def card_numbers(body: str) -> dict[str, float]:
    """The rows of the card's results table: | `name` | value |."""
    return {k: float(v) for k, v in re.findall(r"^\| `([^`]+)` \| ([^|]+) \|$", body, re.MULTILINE)}


def check_card(
    folder: str | Path, tags: list[str], final: dict[str, float], library: str = "transformers"
) -> dict[str, Any]:
    """Assert the card of `folder` parses, has `tags` and `library`, and shows the run file's `final` numbers
    (to the 6 significant digits the table prints); returns its metadata."""
    metadata, body = read_card(folder)
    assert metadata["tags"] == tags and metadata["library_name"] == library
    numbers = card_numbers(body)
    assert numbers.keys() == final.keys() and final
    assert all(numbers[k] == pytest.approx(v, rel=1e-5) for k, v in final.items()), (numbers, final)
    return metadata


def run_example(folder: str | Path) -> dict[str, Any]:
    """Run the card's Python example as written, from the folder's parent (its model id is the folder's
    name); returns the names it defined."""
    import os

    _, body = read_card(folder)
    example = body.split("```python\n")[1].split("```")[0]
    here = os.getcwd()
    os.chdir(Path(folder).parent)
    try:
        namespace: dict[str, Any] = {}
        exec(compile(example, f"{folder}/README.md", "exec"), namespace)
        return namespace
    finally:
        os.chdir(here)
