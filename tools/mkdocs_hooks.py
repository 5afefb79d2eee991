"""MkDocs hooks for the docs site (``hooks:`` in ``mkdocs.yml``; local code, nothing is fetched).

The pages under ``docs/`` link to repository files outside ``docs/`` (the benchmark records in ``benchmarks/``, the
shipped class maps) with ordinary relative links, e.g. ``../benchmarks/RESULTS.md``, which work when the files are
read in the repository. For the built site:

- :func:`on_files` adds those repository files to the site at their repository paths (``benchmarks/RESULTS.md``
  becomes the page ``benchmarks/RESULTS/``; images, JSON and YAML files are copied);
- :func:`on_page_markdown` rewrites each relative link by where its target lies on disk: a file under ``docs/``
  keeps its place in the site, a repository file the link of its copy. A link to a file that is in neither place is
  left as it is, so ``mkdocs build --strict`` still reports it;
- :func:`on_page_content` shows ``\\|`` in code spans of tables as ``|``: a pipe inside a table cell must be escaped
  in Markdown (GitHub then drops the backslash, also in code), but Python-Markdown keeps it in code spans.
"""

from __future__ import annotations

import os
import posixpath
import re
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files

# Repository files (globs relative to the repository root) that the docs link to.
REPO_FILES = ("benchmarks/README.md", "benchmarks/RESULTS.md", "benchmarks/results/**/*", "datasets/class_maps/*")
# Kept out: a result's notes are already part of RESULTS.md.
SKIP_SUFFIXES = (".notes.md",)

TABLE = re.compile(r"<table>.*?</table>", re.S)
CODE = re.compile(r"<code>[^<]*</code>")

# A Markdown link or image target: ](target) or ](target#anchor), no scheme, no spaces.
LINK = re.compile(r"(\]\()([^)\s#:]+)(#[^)\s]*)?(\))")


def _root(config: Any) -> Path:
    return Path(config.config_file_path).resolve().parent


def on_files(files: Files, config: Any) -> Files:
    root = _root(config)
    taken = {f.dest_uri: f.src_uri for f in files}
    for pattern in REPO_FILES:
        for path in sorted(root.glob(pattern)):
            if path.is_file() and not path.name.endswith(SKIP_SUFFIXES):
                file = File(path.relative_to(root).as_posix(), str(root), config.site_dir, config.use_directory_urls)
                if file.dest_uri in taken:  # e.g. docs/benchmarks.md and benchmarks/README.md: benchmarks/index.html
                    raise PluginError(f"{file.src_uri} would overwrite {taken[file.dest_uri]} ({file.dest_uri})")
                taken[file.dest_uri] = file.src_uri
                files.append(file)
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    root, docs = _root(config), Path(config.docs_dir).resolve()
    here = Path(page.file.abs_src_path).resolve().parent
    page_dir = posixpath.dirname(page.file.src_uri)

    def fix(m: re.Match[str]) -> str:
        target = Path(os.path.normpath(here / m.group(2)))
        if target.is_relative_to(docs):
            uri = target.relative_to(docs).as_posix()
        elif target.is_relative_to(root) and files.get_file_from_path(target.relative_to(root).as_posix()):
            uri = target.relative_to(root).as_posix()
        else:
            return m.group(0)
        return f"{m.group(1)}{posixpath.relpath(uri, page_dir or '.')}{m.group(3) or ''}{m.group(4)}"

    return LINK.sub(fix, markdown)


def on_page_content(html: str, page: Any, config: Any, files: Files) -> str:
    def unescape(code: re.Match[str]) -> str:
        return code.group(0).replace("\\|", "|")

    return TABLE.sub(lambda table: CODE.sub(unescape, table.group(0)), html)
