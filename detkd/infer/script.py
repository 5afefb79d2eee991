"""The deployment bundle's ``infer.py``: one self-contained script written from the inference modules.

The bundle must run where neither detkd nor torch is installed, and it must run the very code detkd checked. So the
script is not kept by hand: :func:`standalone_script` joins the bodies of :data:`MODULES` (in dependency order),
drops their imports of each other and puts their standard-library and numpy/OpenCV imports once at the top. A module
of the list may import only the standard library, numpy, OpenCV and earlier modules of the list (checked here);
runtime engines are imported inside the runtimes that use them.

>>> script = standalone_script()
>>> script.startswith("#!/usr/bin/env python3") and "import detkd" not in script and "from detkd" not in script
True
"""

from __future__ import annotations

import ast
from pathlib import Path

MODULES = ("letterboxing", "decode", "runtimes", "media", "cli")  # each imports only those before it
THIRD_PARTY = ("cv2", "numpy")  # what a bundle needs besides its runtime
PACKAGE = "detkd.infer"

HEADER = '''#!/usr/bin/env python3
"""Run a detkd deployment bundle on an image, a folder of images or a video file.

Written by detkd {version} from its inference package (detkd.infer: {modules}): the code detkd's
evaluation and export gates run. It needs numpy, OpenCV and the bundle's runtime (ONNX Runtime, OpenVINO, NCNN,
LiteRT, TensorRT + cuda-python, or PyTorch for TorchScript); never detkd, and never torch except for TorchScript.

Usage (inside the bundle folder)::

    python infer.py IMAGE|FOLDER|VIDEO [--conf 0.25] [--iou 0.7] [--threads N] [--save OUT_DIR] [--device CPU]

Prints one JSON line per image (or video frame): ``{{"source", "frame", "detections": [{{"box": [x1, y1, x2, y2],
"score", "class_id", "label"}}]}}`` with boxes in the original image's pixels. ``--save`` also writes the images (or
the video) with the boxes drawn.
"""

from __future__ import annotations
'''
FOOTER = '\n\nif __name__ == "__main__":\n    sys.exit(main())\n'


def _module_parts(name: str, earlier: tuple[str, ...]) -> tuple[list[str], str]:
    """One module's own import lines (normalised) and its body without docstring and imports."""
    path = Path(__file__).with_name(f"{name}.py")
    text = path.read_text()
    tree = ast.parse(text)
    imports: list[str] = []
    drop: set[int] = set()
    for i, node in enumerate(tree.body):
        span = range(node.lineno, (node.end_lineno or node.lineno) + 1)
        if i == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            drop.update(span)  # the module docstring
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            drop.update(span)
            module = node.module or "" if isinstance(node, ast.ImportFrom) else node.names[0].name
            if module == "__future__":
                continue
            if module.startswith("detkd"):
                if module.rpartition(".")[0] != PACKAGE or module.rpartition(".")[2] not in earlier:
                    raise ValueError(f"{path}: imports {module}; the bundle script may use only {PACKAGE}.{earlier}")
                continue
            imports.append(ast.unparse(node))
    lines = text.splitlines()
    body = "\n".join(line for n, line in enumerate(lines, 1) if n not in drop).strip("\n")
    return imports, body


def _import_block(imports: list[str]) -> str:
    def top(line: str) -> str:
        return line.split()[1].split(".")[0]

    unique = sorted(set(imports), key=lambda s: (s.startswith("from"), s.split()[1]))
    std = [line for line in unique if top(line) not in THIRD_PARTY]
    third = [line for line in unique if top(line) in THIRD_PARTY]
    return "\n".join(std) + "\n\n" + "\n".join(third)


def standalone_script() -> str:
    """The text of a bundle's ``infer.py``."""
    from detkd._version import __version__

    imports: list[str] = []
    bodies = []
    for i, name in enumerate(MODULES):
        own, body = _module_parts(name, MODULES[:i])
        imports += own
        bodies.append(f"# {'-' * (104 - len(name) - len(PACKAGE))} {PACKAGE}.{name}\n{body}")
    header = HEADER.format(version=__version__, modules=", ".join(MODULES))
    return header + "\n" + _import_block(imports) + "\n\n\n" + "\n\n\n".join(bodies) + FOOTER
