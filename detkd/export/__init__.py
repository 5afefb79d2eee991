"""Export a student to edge formats, check each in its own runtime, and package deployment bundles.

``export_models`` exports with Ultralytics' exporter, then does what that exporter does not: it runs every exported
model through its own runtime on the evaluation split and compares COCO mAP with the PyTorch student (the gate),
compares raw outputs and top detections on a few images, times the per-frame pipeline (pre-processing, model call,
NMS) at batch 1, and writes one bundle per format plus a table (Markdown + JSON) of all of them.
"""

from detkd.export.run import export_models
from detkd.export.table import ExportTable, FormatResult, gate_verdict
from detkd.export.targets import TARGETS, FormatUnavailableError

__all__ = ["TARGETS", "ExportTable", "FormatResult", "FormatUnavailableError", "export_models", "gate_verdict"]
