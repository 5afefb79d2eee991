"""``pip install .`` ships what detkd needs at run time: the package, its presets and type marker, the ``detkd``
command, and the dependencies it imports (the wheel is built here, offline, from the working tree)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    build = tmp_path_factory.mktemp("build")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q", "-w", str(out)],
        capture_output=True, text=True, timeout=300, cwd=build,
    )  # fmt: skip
    if proc.returncode != 0 and "No module named pip" in proc.stderr:
        pytest.skip("pip is not installed in this interpreter")
    assert proc.returncode == 0, proc.stderr[-2000:]
    (path,) = out.glob("detkd-*.whl")
    return path


def test_the_wheel_holds_the_package_and_its_data(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    must = {"detkd/__init__.py", "detkd/cli.py", "detkd/py.typed", "detkd/infer/script.py", "detkd/infer/cli.py"}
    assert must <= names
    presets = {n for n in names if n.startswith("detkd/presets/") and n.endswith(".yaml")}
    assert {"detkd/presets/offline.yaml", "detkd/presets/unlabeled.yaml"} <= presets
    assert not any(n.startswith(("tests/", "benchmarks/", "tools/", "docs/")) for n in names)


def test_the_wheel_declares_the_command_and_what_detkd_imports(wheel: Path) -> None:
    z = zipfile.ZipFile(wheel)
    meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    entry = next(n for n in z.namelist() if n.endswith(".dist-info/entry_points.txt"))
    requires = [line.split(":", 1)[1].strip().lower() for line in z.read(meta).decode().splitlines()
                if line.startswith("Requires-Dist:") and "extra ==" not in line]  # fmt: skip
    for dep in ("torch", "ultralytics", "pycocotools", "scipy", "pillow", "tqdm", "safetensors", "pyyaml"):
        assert any(r.startswith(dep) for r in requires), (dep, requires)
    assert "detkd = detkd.cli:main" in z.read(entry).decode()
