"""Small helpers shared by tests: a malicious pickle payload and one tiny distill step."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any


class Evil:
    """Unpickling this runs a shell command that creates ``marker``: a loader that executes pickles is caught."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def tiny_distill(distiller: Any, project: Path) -> dict[str, float]:
    """Train ``distiller`` for one epoch of two steps (imgsz 32, CPU) and return the last row of results.csv."""
    result = distiller.train(project=project, name="kd", epochs=1, imgsz=32, batch=4, device="cpu", val=False,
                             plots=False, fraction=0.67, workers=0)  # fmt: skip
    assert result.best.is_file()
    rows = list(csv.DictReader((result.save_dir / "results.csv").open()))
    return {k.strip(): float(v) for k, v in rows[-1].items()}
