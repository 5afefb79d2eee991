"""The bundle's ``infer.py`` is written from ``detkd.infer``: one file, Python 3.9, no detkd, torch or Ultralytics."""

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from detkd.infer import decode, letterboxing
from detkd.infer import script as script_mod
from detkd.infer.script import MODULES, standalone_script

BLOCK = (
    "import runpy, sys; sys.modules['detkd'] = None; sys.modules['torch'] = None; sys.modules['ultralytics'] = None; "
)


def test_the_script_is_self_contained_python_3_9(tmp_path: Path) -> None:
    text = standalone_script()
    tree = ast.parse(text, feature_version=(3, 9))

    def imports(nodes: list[ast.AST]) -> set[str]:
        names = {a.name.split(".")[0] for n in nodes if isinstance(n, ast.Import) for a in n.names}
        return names | {(n.module or "").split(".")[0] for n in nodes if isinstance(n, ast.ImportFrom)}

    assert imports(tree.body) == {"__future__", "argparse", "json", "sys", "collections", "dataclasses", "pathlib",
                                  "typing", "cv2", "numpy"}  # fmt: skip
    torch_users = {c.name for c in tree.body if isinstance(c, ast.ClassDef) and "torch" in imports(list(ast.walk(c)))}
    assert torch_users == {"TorchScriptRuntime"} and "detkd" not in imports(list(ast.walk(tree)))
    top = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
    names = [n.name for n in top]
    assert len(names) == len(set(names))  # no module of the package shadows another's name
    assert {"letterbox", "preprocess", "postprocess", "nms", "load_bundle", "frames", "draw", "main"} <= set(names)
    path = tmp_path / "infer.py"
    path.write_text(text)
    code = BLOCK + f"sys.argv = ['infer.py', '--help']; runpy.run_path({str(path)!r}, run_name='__main__')"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "Run a detkd deployment bundle" in proc.stdout, proc.stderr[-1500:]


def test_the_script_computes_what_the_package_computes(tmp_path: Path) -> None:
    """The script's letterbox and NMS, run without detkd, give the package's results on the same input."""
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (50, 90, 3), dtype=np.uint8)
    raw = rng.random((1, 4 + 3, 40), dtype=np.float32)
    raw[:, :4] *= 64
    np.save(tmp_path / "img.npy", img)
    np.save(tmp_path / "raw.npy", raw)
    (tmp_path / "infer.py").write_text(standalone_script())
    code = BLOCK + (
        f"import numpy as np; ns = runpy.run_path({str(tmp_path / 'infer.py')!r}); d = {str(tmp_path)!r}; "
        "x, metas = ns['preprocess']([np.load(d + '/img.npy')], 64); np.save(d + '/x.npy', x); "
        "np.save(d + '/dets.npy', ns['postprocess'](np.load(d + '/raw.npy'), metas, conf=0.3, iou=0.5)[0])"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-1500:]
    x, metas = letterboxing.preprocess([img], 64)
    np.testing.assert_array_equal(np.load(tmp_path / "x.npy"), x)
    np.testing.assert_array_equal(np.load(tmp_path / "dets.npy"), decode.postprocess(raw, metas, conf=0.3, iou=0.5)[0])


def test_a_module_that_imports_outside_the_list_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A module of the list importing a later one, or detkd outside the package, cannot be joined into one file."""
    with pytest.raises(ValueError, match=r"imports detkd\.infer\.media"):
        script_mod._module_parts("cli", MODULES[:2])  # cli before media and runtimes
    bad = tmp_path / "letterboxing.py"
    bad.write_text('"""doc"""\nfrom detkd.errors import ConfigError\n')
    monkeypatch.setattr(script_mod, "__file__", str(tmp_path / "script.py"))
    with pytest.raises(ValueError, match=r"imports detkd\.errors"):
        standalone_script()
