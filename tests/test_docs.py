"""The documentation site builds with ``mkdocs build --strict`` (no warning: no broken link or anchor, no docstring
griffe cannot read) and without the network: the build runs in a child whose every socket connection and DNS
lookup fails and is recorded, like ``tests/test_offline.py``'s runs."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import NET_BLOCKER

ROOT = Path(__file__).resolve().parents[1]


PAGES = [
    "index.html",
    "getting-started/index.html",
    "teachers/index.html",
    "recipe/index.html",
    "offline/index.html",
    "export/index.html",
    "benchmarking/index.html",
    "benchmarks/index.html",
    "benchmarks/RESULTS/index.html",
    "trust/index.html",
    "robustness/index.html",
    "scale/index.html",
    "reference/index.html",
    "reference/distiller/index.html",
    "reference/config/index.html",
    "reference/losses/index.html",
    "search/search_index.json",
]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings") is None:
        pytest.skip("mkdocs/mkdocstrings not installed (pip install -c constraints.txt -e '.[dev]')")
    tmp = tmp_path_factory.mktemp("docs")
    (tmp / "sitecustomize.py").write_text(NET_BLOCKER)
    log, out = tmp / "net.log", tmp / "site"
    env = {**os.environ, "DETKD_NET_LOG": str(log), "NO_MKDOCS_2_WARNING": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(tmp), env.get("PYTHONPATH", "")) if p)
    env.update(HTTP_PROXY="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9", NO_PROXY="")
    cmd = [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"), "-d", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "WARNING" not in proc.stderr, proc.stderr[-3000:]
    attempts = log.read_text() if log.exists() else ""
    assert attempts == "", f"the docs build tried to reach the network:\n{attempts}"
    return out


def test_the_site_builds_strictly_offline_with_every_page(site):
    missing = [p for p in PAGES if not (site / p).is_file()]
    assert not missing, missing
    assert "kd.feature.cwd.temperature" in (site / "recipe" / "index.html").read_text()  # the generated reference
    api = (site / "reference" / "distiller" / "index.html").read_text()
    assert 'id="detkd.engine.distiller.Distiller"' in api and "teacher_cache" in api  # rendered from the docstring


def test_the_site_fetches_nothing_when_viewed(site):
    """No web fonts or CDN assets: every page's stylesheets and scripts are the site's own files."""
    html = (site / "index.html").read_text()
    assert "fonts.googleapis.com" not in html and "fonts.gstatic.com" not in html
    for page in site.rglob("*.html"):
        text = page.read_text()
        for tag in ('<link rel="stylesheet" href="http', '<script src="http'):
            assert tag not in text, (page, tag)


def test_links_to_repository_files_point_into_the_site(site):
    """docs/ links to ../benchmarks/RESULTS.md (right in the repository); in the site that is the copied page."""
    offline = (site / "offline" / "index.html").read_text()
    assert 'href="../benchmarks/RESULTS/"' in offline and "../benchmarks/RESULTS.md" not in offline
    assert (site / "datasets" / "class_maps" / "coco80_to_hituav.yaml").is_file()
    # the guide's page and benchmarks/README.md each keep their own place
    assert "Running <code>detkd bench</code>" in (site / "benchmarking" / "index.html").read_text()
    assert "The harness: <code>detkd bench</code>" in (site / "benchmarks" / "index.html").read_text()


def test_doctest_blocks_become_code_fences():
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        from griffe_doctest import fence_doctests
    except ModuleNotFoundError as e:  # griffe comes with mkdocstrings
        pytest.skip(f"{e.name} not installed (pip install -c constraints.txt -e '.[dev]')")
    finally:
        sys.path.remove(str(ROOT / "tools"))
    text = "Sum:\n\n>>> 1 + 1\n2\n\nArgs:\n    x: a value.\n\n    >>> [0.5]\n    [0.5]"
    assert fence_doctests(text) == (
        "Sum:\n\n```pycon\n>>> 1 + 1\n2\n```\n\n"
        "Args:\n    x: a value.\n\n    ```pycon\n    >>> [0.5]\n    [0.5]\n    ```"
    )
