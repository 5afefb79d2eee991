"""The KD terms of a run per epoch: ``kd_terms.csv`` (written each epoch, rows of a resumed epoch replaced) and
``kd_terms.png`` drawn from it beside ``results.png``.

Two panels: the weighted terms as they enter the loss (``kd/feat``, ``kd/cls``, ``kd/box``, ... the columns
``results.csv`` also holds), and every unweighted term before weights and schedules (per pyramid level and
branch), which shows whether a term that a schedule switched off was still moving. Drawn on a bare matplotlib
``Figure`` with the Agg canvas, so the host process's pyplot backend and state are left alone.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from collections.abc import Mapping
from pathlib import Path

from detkd.utils.files import replace_text

LOGGER = logging.getLogger(__name__)
KD_TERMS_PNG = "kd_terms.png"
KD_TERMS_CSV = "kd_terms.csv"


def write_epoch_row(path: Path, epoch: int, values: Mapping[str, float]) -> None:
    """Write ``values`` as the row of ``epoch`` (1-based) in the CSV at ``path``, dropping rows of this epoch and
    later (left by a run killed after logging them, then resumed); columns are the union over rows. The file is
    replaced atomically; a failure to write it is a warning, never the end of the run."""
    rows: list[dict[str, str]] = []
    try:
        if path.is_file():
            with path.open(newline="") as fh:
                rows = [r for r in csv.DictReader(fh) if r.get("epoch", "").isdigit() and int(r["epoch"]) < epoch]
        rows.append({"epoch": str(epoch), **{k: f"{v:.6g}" for k, v in values.items()}})
        columns = ["epoch", *sorted({k for r in rows for k in r} - {"epoch"}, key=lambda k: (k.count("/"), k))]
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=columns, restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        replace_text(path, text.getvalue())
    except OSError as e:
        LOGGER.warning("%s: could not write the KD terms of epoch %d (%s)", path, epoch, e)


def read_terms(csv_path: Path) -> tuple[list[int], dict[str, list[float]]]:
    """Epochs and, per column, its values (NaN where a row lacks the column) from a ``kd_terms.csv``."""
    with csv_path.open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if (r.get("epoch") or "").isdigit()]
    epochs = [int(r["epoch"]) for r in rows]
    columns = [c for c in (rows[0].keys() if rows else ()) if c != "epoch"]

    def value(text: str | None) -> float:
        try:
            return float(text) if text else math.nan
        except ValueError:
            return math.nan

    return epochs, {c: [value(r.get(c)) for r in rows] for c in columns}


def plot_kd_terms(csv_path: Path, out: Path | None = None) -> Path | None:
    """Draw ``kd_terms.png`` beside ``csv_path`` (or at ``out``); None (and a warning) if there is nothing to draw
    or the file cannot be written. Never raises: a plot must not end a finished run."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out = out or csv_path.with_name(KD_TERMS_PNG)
    try:
        epochs, columns = read_terms(csv_path)
    except (OSError, csv.Error) as e:
        LOGGER.warning("%s: cannot read the KD terms to plot (%s)", csv_path, e)
        return None
    weighted = {k: v for k, v in columns.items() if k.startswith("kd/") and k.count("/") == 1}
    unweighted = {k.removeprefix("unweighted/"): v for k, v in columns.items() if k.startswith("unweighted/")}
    if not epochs or not (weighted or unweighted):
        LOGGER.warning("%s: no KD terms to plot", csv_path)
        return None
    fig = Figure(figsize=(11, 4), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    panels = [("weighted (as in the loss)", weighted), ("unweighted (before weights and schedules)", unweighted)]
    for i, (title, series) in enumerate(panels, 1):
        ax = fig.add_subplot(1, 2, i)
        for name, values in sorted(series.items()):
            ax.plot(epochs, values, marker=".", label=name)
        finite = [v for values in series.values() for v in values if math.isfinite(v)]
        if finite and min(finite) > 0 and max(finite) / min(finite) > 100:
            ax.set_yscale("log")
        ax.set(title=title, xlabel="epoch")
        ax.grid(alpha=0.3)
        if series:
            ax.legend(fontsize=7, ncol=2 if len(series) > 8 else 1)
    try:
        fig.savefig(out)
    except OSError as e:
        LOGGER.warning("%s: could not write the KD plot (%s)", out, e)
        return None
    return out
