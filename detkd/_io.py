"""Reading the files a user hands detkd, bounded: every error names the file, nothing in a file runs.

* Only regular files are read (``/dev/zero``, a FIFO or a folder is refused at once), at most ``max_bytes`` of them,
  and a file that holds NUL bytes is reported as binary rather than decoded.
* YAML is parsed with PyYAML's safe loader (plain data: no tags that build objects), after its node graph has been
  measured: aliases share nodes, so a few lines of nested anchors (a "billion laughs" bomb) expand to billions of
  values the moment anything walks the data. A document that would expand past :data:`MAX_YAML_NODES` nodes, or
  that refers to itself, is refused before it is constructed.
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import yaml

from detkd.errors import InputFileError

MAX_YAML_BYTES = 8 * 2**20  # data YAMLs, KD recipes, class maps, ensembles, model YAMLs: all far smaller
MAX_YAML_NODES = 1_000_000  # values after alias expansion (a 20k-class names list is 20k nodes)
_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def read_text(path: str | Path, what: str, *, max_bytes: int = MAX_YAML_BYTES) -> str:
    """The text of a regular file of at most ``max_bytes`` (UTF-8, BOM allowed); ``what`` names it in errors."""
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise InputFileError(p, f"{what} file not found") from None
    except OSError as e:
        raise InputFileError(p, f"{what} file cannot be read ({e.strerror or e})") from e
    if stat.S_ISDIR(st.st_mode):
        raise InputFileError(p, f"is a folder, expected a {what} file")
    if not stat.S_ISREG(st.st_mode):
        raise InputFileError(p, f"is not a regular file (a device, FIFO or socket), expected a {what} file")
    if st.st_size > max_bytes:
        raise InputFileError(p, f"{what} file is {st.st_size / 2**20:.1f} MiB; at most {max_bytes / 2**20:.0f} MiB")
    try:
        with p.open("rb") as fh:
            raw = fh.read(max_bytes + 1)
    except OSError as e:
        raise InputFileError(p, f"{what} file cannot be read ({e.strerror or e})") from e
    if len(raw) > max_bytes:  # grew while being read
        raise InputFileError(p, f"{what} file is larger than {max_bytes / 2**20:.0f} MiB")
    if b"\x00" in raw:
        raise InputFileError(p, f"is a binary file, not a {what} (text)")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputFileError(p, f"{what} file is not UTF-8 text ({e.reason} at byte {e.start})") from e


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def expanded_nodes(root: yaml.Node, limit: int = MAX_YAML_NODES) -> int:
    """How many nodes ``root`` holds once every alias is expanded (iteratively: no recursion limit to hit).

    Raises:
        ValueError: the graph refers to itself, or expands past ``limit``.
    """
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()  # ancestors of the node being expanded
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            open_nodes.discard(key)
            sizes[key] = 1 + sum(sizes[id(c)] for c in _children(node))
            if sizes[key] > limit:
                raise ValueError(f"expands to more than {limit:,} values through aliases (a YAML bomb?)")
            continue
        if key in sizes:
            continue
        open_nodes.add(key)
        stack.append((node, True))
        for child in _children(node):
            if id(child) in open_nodes:
                raise ValueError("an alias refers to a node that contains it (a recursive document)")
            if id(child) not in sizes:
                stack.append((child, False))
    return sizes[id(root)]


def parse_yaml(text: str, source: str | Path, what: str = "YAML") -> Any:
    """Plain data from YAML text, refusing documents that expand past :data:`MAX_YAML_NODES` (see module doc)."""
    loader = _LOADER(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        expanded_nodes(node)
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        raise InputFileError(source, f"not valid YAML ({' '.join(str(e).split())})") from e
    except ValueError as e:
        raise InputFileError(source, f"{what} {e}") from e
    except RecursionError as e:
        raise InputFileError(source, f"{what} is nested too deeply") from e
    finally:
        loader.dispose()


def read_yaml(path: str | Path, what: str, *, max_bytes: int = MAX_YAML_BYTES) -> Any:
    """Parse a YAML file safely and boundedly (see module doc); ``what`` names it in errors (e.g. "KD config")."""
    return parse_yaml(read_text(path, what, max_bytes=max_bytes), path, what)
