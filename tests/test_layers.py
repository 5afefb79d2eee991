"""The house rules of the code: import layers (import-linter), no import cycles, and no import of detkd that changes
its host process (environment variables, patched attributes)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import grimp
import tomllib

import detkd

ROOT = Path(__file__).resolve().parents[1]

# Every detkd module imported in a fresh interpreter; prints what a host would see change (nothing, we assert).
IMPORT_ALL = """
import importlib, json, os, pkgutil, sys
{prelude}
def state():
    return {{"env": dict(os.environ), **{{name: repr(get()) for name, get in WATCHED.items()}}}}
before = state()
import detkd
for m in pkgutil.walk_packages(detkd.__path__, "detkd."):
    if m.name != "detkd.__main__":
        importlib.import_module(m.name)
after = state()
print(json.dumps({{k: [before[k], after[k]] for k in before if before[k] != after[k]}}))
"""
# The third-party packages detkd's modules import, imported first (offline): what they do to the process on import
# (torch, OpenCV and Ultralytics set environment variables) is theirs, not detkd's. Then what detkd patches for the
# time of its calls, so that the originals are known.
PRELUDE = """
os.environ["YOLO_OFFLINE"] = "1"
for name in {external}:
    try:
        importlib.import_module(name)
    except ImportError:  # an optional runtime (LiteRT, TensorRT) not installed here
        pass
import torch
import ultralytics.data.utils as ul_data, ultralytics.engine.trainer as ul_trainer
import ultralytics.utils.plotting as ul_plot
from openvino_telemetry.utils.opt_in_checker import OptInChecker
del os.environ["YOLO_OFFLINE"]
WATCHED = {"data.check_font": lambda: ul_data.check_font, "plotting.check_font": lambda: ul_plot.check_font,
           "trainer.check_amp": lambda: ul_trainer.check_amp, "ddp": lambda: torch.nn.parallel.DistributedDataParallel,
           "openvino telemetry": lambda: OptInChecker.check, "torch threads": torch.get_num_threads}
"""


def _external_imports() -> list[str]:
    """Every third-party module detkd's modules import at module level or in functions."""
    graph = grimp.build_graph("detkd", include_external_packages=True)
    return sorted(m for m in graph.modules if not m.startswith("detkd"))


def _changes(tmp_path: Path, prelude: str) -> dict:
    from tests.helpers import NET_BLOCKER

    env = {k: v for k, v in os.environ.items() if not k.startswith("YOLO_")}
    env.update(DETKD_NET_LOG=str(tmp_path / "net.log"), HOME=str(tmp_path), PYTHONPATH=str(ROOT))
    code = NET_BLOCKER + IMPORT_ALL.format(prelude=prelude)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_the_import_layers_hold() -> None:
    """``[tool.importlinter]`` in pyproject.toml: entry points > engine > offline | export > eval > teachers >
    students | data | infer > losses > adapters, the base modules under all of them, losses free of models."""
    lint = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run([str(lint), "--config", str(ROOT / "pyproject.toml")], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert "0 broken" in proc.stdout


def test_no_import_cycles_not_even_inside_functions() -> None:
    """No module reaches itself through imports, counting those inside functions (type-only imports aside)."""
    graph = grimp.build_graph("detkd", exclude_type_checking_imports=True)
    cycles = [
        (a, b)
        for a in sorted(graph.modules)
        for b in sorted(graph.find_modules_directly_imported_by(a))
        if graph.chain_exists(importer=b, imported=a)
    ]
    assert not cycles, f"import cycles through: {cycles}"


def test_a_first_import_of_detkd_leaves_no_offline_switch_and_stays_off_the_network(tmp_path: Path) -> None:
    """Importing every detkd module into a fresh interpreter (Ultralytics first imported by detkd, inside its
    offline scope) reaches for no network and leaves no ``YOLO_*`` variable behind."""
    changed = _changes(tmp_path, "WATCHED = {}")
    assert not (tmp_path / "net.log").exists()
    after = changed.get("env", [{}, {}])[1]
    assert not {k for k in after if k.startswith("YOLO_")}, after


def test_importing_detkd_changes_no_environment_variable_and_patches_nothing(tmp_path: Path) -> None:
    """With the third-party packages imported first (their own import effects are theirs), importing every detkd
    module leaves ``os.environ`` as it was and swaps none of what detkd swaps during its calls (Ultralytics' font and
    AMP checks, torch's DDP class, OpenVINO's telemetry consent, torch's thread count)."""
    assert _changes(tmp_path, PRELUDE.replace("{external}", repr(_external_imports()))) == {}


def test_offline_guards_restore_what_they_patch() -> None:
    import ultralytics.data.utils
    import ultralytics.engine.trainer  # noqa: F401  (imported before the snapshot: its import sets variables)
    from openvino_telemetry.utils.opt_in_checker import OptInChecker

    from detkd._offline import offline_guards

    before, env = OptInChecker.check, dict(os.environ)
    with offline_guards():
        assert OptInChecker.check is not before and os.environ.get("YOLO_OFFLINE")
    assert OptInChecker.check is before and dict(os.environ) == env


def test_the_version_is_the_package_metadata_version() -> None:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert meta["version"] == detkd.__version__
