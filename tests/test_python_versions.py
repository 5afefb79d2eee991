"""detkd runs on every Python that ``requires-python`` admits: the lowest one and the newest installed are checked.

Each interpreter compiles every module of detkd (its own grammar: ``except*``, PEP 695 generics and the like fail
on older ones) and resolves every standard-library name the code imports or reads as ``module.attr`` (``typing.Self``
and ``tomllib`` are 3.11+; ``imghdr`` is gone in 3.13). Third-party packages declare their own Python support; the
check covers what detkd writes itself, without installing torch into each interpreter.

Interpreters are found on ``PATH`` (``python3.10``) or under pyenv; a missing one skips with its name.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("detkd", "tools", "benchmarks")

# Run by the interpreter under test: prints a JSON list of "path:line: problem" strings.
CHECKER = r"""
import ast, importlib, json, sys
from pathlib import Path

problems = []
import os
# this interpreter's standard library and the newer one running the tests (a module added later, like tomllib, is
# absent from the older list but is still not third-party)
stdlib = set(sys.stdlib_module_names) | set(json.loads(os.environ.get("DETKD_STDLIB", "[]")))


def resolve(module, name=None):
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        return f"no module {module!r} ({e})"
    if name is not None and not hasattr(mod, name):
        try:
            importlib.import_module(f"{module}.{name}")
        except ImportError:
            return f"{module}.{name} does not exist"
    return None


for root in sys.argv[1:]:
    for path in sorted(Path(root).rglob("*.py")):
        src = path.read_text(encoding="utf-8")
        try:
            tree = compile(src, str(path), "exec", ast.PyCF_ONLY_AST)
            compile(tree, str(path), "exec")
        except SyntaxError as e:
            problems.append(f"{path}:{e.lineno}: syntax: {e.msg}")
            continue
        modules = {}  # local name -> stdlib module bound by `import X` / `import X as Y`
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] in stdlib:
                        err = resolve(alias.name)
                        if err:
                            problems.append(f"{path}:{node.lineno}: {err}")
                        elif alias.asname or "." not in alias.name:
                            modules[alias.asname or alias.name] = alias.name
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                if node.module.split(".")[0] in stdlib and node.module != "__future__":
                    for alias in node.names:
                        err = resolve(node.module, None if alias.name == "*" else alias.name)
                        if err:
                            problems.append(f"{path}:{node.lineno}: {err}")
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules:
                err = resolve(modules[node.value.id], node.attr)
                if err:
                    problems.append(f"{path}:{node.lineno}: {err}")
print(json.dumps(sorted(set(problems))))
"""


def declared_minimum() -> tuple[int, int]:
    """The lowest Python ``pyproject.toml`` admits (``requires-python = ">=3.X"``)."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    m = re.search(r'^requires-python\s*=\s*">=\s*(\d+)\.(\d+)"', text, re.M)
    assert m, 'pyproject.toml: requires-python must read ">=3.X"'
    return int(m[1]), int(m[2])


def find_python(version: str) -> str | None:
    """An interpreter of ``version`` (``"3.10"``) under pyenv or on PATH that runs, else None (a pyenv shim for a
    version not selected exits 127: it is tried, not trusted)."""
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    candidates = [str(p) for p in sorted(pyenv.glob(f"{version}.*/bin/python{version}"), reverse=True)]
    candidates += [p for p in [shutil.which(f"python{version}")] if p]
    for candidate in candidates:
        probe = subprocess.run([candidate, "-I", "-c", "import sys; print(sys.version_info[:2])"],
                               capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
        if probe.returncode == 0 and probe.stdout.strip() == str(tuple(map(int, version.split(".")))):
            return candidate
    return None


def run_checker(python: str, *roots: str) -> list[str]:
    env = {**os.environ, "DETKD_STDLIB": json.dumps(sorted(sys.stdlib_module_names))}
    out = subprocess.run([python, "-I", "-c", CHECKER, *roots], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300, check=False)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    return list(json.loads(out.stdout))


def check(version: str) -> list[str]:
    python = find_python(version)
    if python is None:
        pytest.skip(f"no Python {version} here (PATH or pyenv): its compatibility check did not run")
    return run_checker(python, *SOURCES)


def test_lowest_declared_python_runs_detkd_code() -> None:
    major, minor = declared_minimum()
    assert check(f"{major}.{minor}") == []


@pytest.mark.parametrize("version", ["3.13"])
def test_newer_python_runs_detkd_code(version: str) -> None:
    assert check(version) == []


def test_checker_catches_what_the_lowest_python_lacks(tmp_path: Path) -> None:
    """The check can fail: code written for 3.11+ is reported on 3.10, line by line."""
    major, minor = declared_minimum()
    python = find_python(f"{major}.{minor}")
    if python is None:
        pytest.skip(f"no Python {major}.{minor} here (PATH or pyenv)")
    bad = tmp_path / "pkg"
    bad.mkdir()
    (bad / "new.py").write_text(
        "from typing import Self\nimport tomllib\nimport enum\nclass C(enum.StrEnum):\n    A = 'a'\n", encoding="utf-8"
    )
    (bad / "grammar.py").write_text("try:\n    pass\nexcept* ValueError:\n    pass\n", encoding="utf-8")
    problems = run_checker(python, str(bad))
    if (major, minor) >= (3, 11):  # pragma: no cover - only when the floor is raised
        pytest.skip("the sample uses 3.11 features; the declared floor already has them")
    text = "\n".join(problems)
    assert "new.py:1: typing.Self does not exist" in text
    assert "new.py:2: no module 'tomllib'" in text
    assert "new.py:4: enum.StrEnum does not exist" in text
    assert "grammar.py:3: syntax" in text
