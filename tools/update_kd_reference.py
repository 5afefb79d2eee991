"""Regenerate the KD config reference in docs/recipe.md from the code: ``python tools/update_kd_reference.py``."""

from __future__ import annotations

import sys
from pathlib import Path

from detkd.catalog import render_markdown

START, END = "<!-- kd-reference:start -->", "<!-- kd-reference:end -->"
PAGE = "docs/recipe.md"  # the page that holds the reference, between the markers


def main() -> int:
    page = Path(__file__).resolve().parents[1] / PAGE
    text = page.read_text(encoding="utf-8")
    if START not in text or END not in text:
        print(f"{page}: markers {START} / {END} not found", file=sys.stderr)
        return 1
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    page.write_text(f"{head}{START}\n{render_markdown()}{END}{tail}", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
