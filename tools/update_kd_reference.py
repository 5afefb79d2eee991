"""Regenerate the KD config reference in docs/recipe.md and the README's method table from the method registry:
``python tools/update_kd_reference.py``."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from detkd.catalog import render_markdown, render_method_table

# (page, marker name, renderer): each block sits between <!-- NAME:start --> and <!-- NAME:end -->
BLOCKS: list[tuple[str, str, Callable[[], str]]] = [
    ("docs/recipe.md", "kd-reference", render_markdown),
    ("README.md", "methods", render_method_table),
]


def main() -> int:
    root = Path(__file__).resolve().parents[1]
    for rel, name, render in BLOCKS:
        page = root / rel
        start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
        text = page.read_text(encoding="utf-8")
        if start not in text or end not in text:
            print(f"{page}: markers {start} / {end} not found", file=sys.stderr)
            return 1
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        page.write_text(f"{head}{start}\n{render()}{end}{tail}", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
