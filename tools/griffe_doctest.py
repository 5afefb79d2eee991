"""Griffe extension for the docs site: show docstring examples (``>>>`` doctest blocks) as Python console code.

detkd's docstrings hold doctests as plain text (``tests/test_doctests.py`` runs them). Markdown would read a line
starting with ``>>>`` as a nested quote and ``[0.0, 0.5]`` as a link, so each block (the ``>>>`` lines, their
continuations and expected output, up to the next blank line) is wrapped in a ``pycon`` code fence before
mkdocstrings renders it. Only the rendered text changes; the code and its docstrings are untouched.
"""

from __future__ import annotations

from typing import Any

import griffe


def fence_doctests(text: str) -> str:
    """Wrap every doctest block of ``text`` in a ``pycon`` fence at the block's own indentation
    (``tests/test_docs.py`` shows an example)."""
    lines, out, i = text.splitlines(), [], 0
    while i < len(lines):
        line = lines[i]
        if not line.lstrip().startswith(">>>"):
            out.append(line)
            i += 1
            continue
        indent = line[: len(line) - len(line.lstrip())]
        block = []
        while i < len(lines) and lines[i].strip() and lines[i].startswith(indent):
            block.append(lines[i])
            i += 1
        out += [f"{indent}```pycon", *block, f"{indent}```"]
    return "\n".join(out)


class DoctestFences(griffe.Extension):
    """Fence the doctest blocks of every docstring griffe loads."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None and ">>>" in obj.docstring.value:
            obj.docstring.value = fence_doctests(obj.docstring.value)
