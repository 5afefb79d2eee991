"""Regenerate the README's KD config reference from the code: ``python tools/update_kd_reference.py``."""

from __future__ import annotations

import sys
from pathlib import Path

from detkd.catalog import render_markdown

START, END = "<!-- kd-reference:start -->", "<!-- kd-reference:end -->"


def main() -> int:
    readme = Path(__file__).resolve().parents[1] / "README.md"
    text = readme.read_text(encoding="utf-8")
    if START not in text or END not in text:
        print(f"{readme}: markers {START} / {END} not found", file=sys.stderr)
        return 1
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n{render_markdown()}{END}{tail}", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
