"""``export_models``: export a student to edge formats, check each in its own runtime, and package deployment bundles.

``export_models`` exports with Ultralytics' exporter, then does what that exporter does not: it runs every exported
model through its own runtime on the evaluation split and compares COCO mAP with the PyTorch student (the gate),
compares raw outputs and top detections on a few images, times the per-frame pipeline (pre-processing, model call,
NMS) at batch 1, and writes one bundle per format plus a table (Markdown + JSON) of all of them.
"""

from __future__ import annotations

import gc
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from detkd._offline import offline_call
from detkd._version import __version__
from detkd.errors import ConfigError, DetkdError, InputFileError
from detkd.export.targets import TARGETS, FormatUnavailableError, Target, check_available, parse_targets
from detkd.logs import logged
from detkd.progress import progress_bar

if TYPE_CHECKING:
    from detkd.classmap import ClassMap

from detkd.export.table import ExportTable, FormatResult

LOGGER = logging.getLogger(__name__)


@offline_call
@logged
def export_models(
    weights: str | Path,
    formats: str | list[str] = "onnx",
    *,
    imgsz: int | None = None,
    data: str | Path | None = None,
    split: str = "val",
    calib_split: str = "train",
    calib_images: int = 300,
    out_dir: str | Path | None = None,
    threads: int | None = None,
    latency_runs: int = 50,
    parity_images: int = 8,
    budget: str | dict[str, float] | None = None,
    fallback: bool = False,
    skip_unavailable: bool = False,
    device: str = "cpu",
    end2end: bool = False,
    class_map: str | Path | None = None,
    progress: bool = True,
) -> ExportTable:
    """Export ``weights`` to every format in ``formats``, gate each against PyTorch, write bundles and a table.

    The gate scores on the data's classes: a model of other classes through ``class_map``, or by name.
    ``progress``: a bar per format (on a terminal).
    """
    import numpy as np

    from detkd.data.checks import split_report
    from detkd.data.dataset import load_data_spec
    from detkd.eval.predict import data_class_map, read_image
    from detkd.export.checks import parse_budget
    from detkd.students import ultralytics_yolo as uy
    from detkd.utils.args import check_imgsz, check_threads
    from detkd.utils.device import set_cpu_threads, torch_device_name
    from detkd.utils.environment import run_environment
    from detkd.utils.files import check_writable

    targets = parse_targets(formats)
    budgets = parse_budget(budget)
    for name, value in (("--runs", latency_runs), ("--calib-images", calib_images), ("parity_images", parity_images)):
        if value < 1:
            raise ConfigError(f"{name} {value}: must be at least 1")
    check_threads(threads)
    if imgsz is not None:
        check_imgsz(imgsz)
    device = torch_device_name(device)
    skipped = _unavailable(targets, device, data is not None, skip_unavailable)

    weights = Path(weights)
    model = uy.load_detection_model(weights)
    if end2end and not uy.is_end2end(model):
        raise ConfigError(f"{weights}: --end2end needs a one-to-one (NMS-free) head, as YOLO26's; this model has none")
    spec = load_data_spec(data) if data is not None else None
    # a model of other classes is gated on the data's classes (its map, or by name), or refused before any work
    cmap = data_class_map(uy.class_names(model), spec.names, class_map, source=weights) if spec is not None else None
    train_args = getattr(model, "args", None) or {}
    imgsz = int(imgsz or (train_args.get("imgsz") if isinstance(train_args, dict) else None) or 640)
    stride = int(max(model.stride.tolist()))
    if imgsz < stride or imgsz % stride:
        nearest = max(stride, round(imgsz / stride) * stride)
        raise ConfigError(f"--imgsz {imgsz}: must be a multiple of the model's stride {stride} (e.g. {nearest})")
    out = Path(out_dir) if out_dir else weights.parent / f"{weights.stem}_export"
    check_writable(out)
    threads = set_cpu_threads(threads)

    if spec is not None:
        images: Any = [s.image for s in split_report(spec, split).samples][:parity_images]
        if not images:
            raise DetkdError(f"{data}: split '{split}' has no images to check the exports on")
        frame = read_image(images[0])
    else:  # no data: compare on a fixed random batch (weaker than real images; the report says so)
        images = np.random.default_rng(0).random((2, 3, imgsz, imgsz), dtype=np.float32)
        frame = None

    ctx = _Context(model, weights, spec, split, imgsz, images, frame, threads, latency_runs, budgets, out,
                   data, calib_split, calib_images, device, end2end, environment=run_environment(),
                   cmap=cmap)  # fmt: skip
    pytorch: dict[str, Any] = {
        "params_m": uy.count_parameters(model) / 1e6,
        "gflops": _gflops(model, imgsz),
        "size_mb": weights.stat().st_size / 2**20,
        "end2end": end2end,
        **ctx.reference(end2end)[1],
    }
    table = ExportTable(
        source=str(weights),
        imgsz=imgsz,
        data=str(data) if data is not None else None,
        split=split,
        calibration={"split": calib_split, "images": calib_images} if any(t.calibrates for t in targets) else None,
        threads=threads,
        pytorch=pytorch,
        requested=[t.name for t in targets],
        environment=ctx.environment,
    )
    queue = list(targets)
    bar = progress_bar(len(queue), "export", unit="format", enabled=progress)
    while queue:
        t = queue.pop(0)
        if table.row(t.name):
            continue
        if t.name in skipped:
            table.rows.append(FormatResult(t.name, t.precision, t.runtime, t.hardware, skipped=skipped[t.name]))
            bar.update()
            continue
        bar.set_postfix_str(t.name)
        try:
            result = ctx.export_one(t)
        except DetkdError as e:  # one format failing does not lose the others: recorded, and the table fails
            LOGGER.error("%s", e)
            result = FormatResult(t.name, t.precision, t.runtime, t.hardware, error=str(e))
        table.rows.append(result)
        bar.update()
        LOGGER.info("%s", result.gate["reason"] if result.gate else result)
        if not result.passed and fallback and t.fallback:
            result.fallback_to = t.fallback
            LOGGER.warning("%s failed its gate; falling back to %s", t.name, t.fallback)
            queue.insert(0, TARGETS[t.fallback])
    bar.close()
    (out / "export_table.md").write_text(table.to_markdown())
    (out / "export_table.json").write_text(json.dumps(table.to_dict(), indent=2))
    return table


def _unavailable(targets: list[Target], device: str, has_data: bool, skip: bool) -> dict[str, str]:
    """Targets this machine cannot produce, with the reason; raises on the first unless ``skip``."""
    skipped: dict[str, str] = {}
    for t in targets:
        try:
            check_available(t, device=device, has_data=has_data)
        except FormatUnavailableError as e:
            if not skip:
                raise
            skipped[t.name] = str(e).split(": ", 1)[-1]
            LOGGER.warning("skipping %s", e)
    return skipped


def _gflops(model: Any, imgsz: int) -> float:
    from ultralytics.utils.torch_utils import get_flops

    return float(get_flops(model, imgsz))


@dataclass
class _Context:
    """What every target's export and checks share."""

    model: Any
    weights: Path
    spec: Any
    split: str
    imgsz: int
    images: Any
    frame: Any
    threads: int | None
    latency_runs: int
    budgets: dict[str, float]
    out: Path
    data: Any
    calib_split: str
    calib_images: int
    device: str
    end2end: bool
    references: dict[bool, tuple[Any, dict[str, Any]]] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    cmap: ClassMap | None = None  # the model's classes onto the data's, when they differ

    def reference(self, end2end: bool) -> tuple[Any, dict[str, Any]]:
        """PyTorch in the same head mode as an export (one-to-one, or one-to-many + NMS), with its mAP and latency."""
        if end2end not in self.references:
            import copy

            from detkd.eval.predict import TorchPredictor

            model = copy.deepcopy(self.model)
            model.end2end = end2end
            predictor = TorchPredictor(model, "cpu")
            measured = {"map": self.evaluate(predictor), "latency": self.latency(predictor)}
            self.references[end2end] = (predictor, measured)
        return self.references[end2end]

    def evaluate(self, predictor: Any) -> dict[str, float] | None:
        if self.spec is None:
            return None
        from detkd.eval.coco import evaluate
        from detkd.eval.predict import on_data_classes

        res = evaluate(on_data_classes(predictor, self.cmap), self.spec, self.split, imgsz=self.imgsz)
        return {"mAP50-95": res.map50_95, "mAP50": res.map50}

    def latency(self, predictor: Any) -> dict[str, Any]:
        from detkd.export.checks import measure_latency

        return measure_latency(
            predictor, self.imgsz, image=self.frame, runs=self.latency_runs, threads=self.threads
        ).to_dict()

    def export_one(self, target: Target) -> FormatResult:
        from detkd.export.bundle import model_size_mb, recipe_of, runtime_metadata, write_bundle
        from detkd.export.checks import gate, raw_parity
        from detkd.export.convert import convert
        from detkd.infer.runtimes import RUNTIMES
        from detkd.students import ultralytics_yolo as uy

        bundle = self.out / target.name
        LOGGER.info("exporting %s (%s, %s) to %s", target.name, target.precision, target.runtime, bundle)
        end2end = self.end2end and target.end2end_capable
        if self.end2end and not end2end:
            LOGGER.warning("%s has no top-k support: exported with the one-to-many head and NMS outside", target.name)
        model_path = convert(
            self.model, target, bundle, self.imgsz, data=self.spec, calib_split=self.calib_split,
            calib_images=self.calib_images, device=self.device, end2end=end2end,
        )  # fmt: skip
        reference, ref = self.reference(end2end)
        reference_map = ref["map"]
        names = uy.class_names(self.model)
        meta = runtime_metadata(target, model_path, self.imgsz, end2end, names)
        try:
            runtime = RUNTIMES[target.runtime](model_path, meta, threads=self.threads, device=_runtime_device(target))
        except Exception as e:  # each runtime raises its own types for a model it cannot load
            raise InputFileError(model_path, f"{target.runtime} cannot load the exported model ({e})") from e
        try:
            parity = raw_parity(reference, runtime, self.images, self.imgsz, precision=target.precision)
            maps = self.evaluate(runtime)
            gate_maps = {"pytorch": reference_map, target.name: maps} if maps and reference_map else None
            decision = gate(target.name, target.precision, parity, gate_maps, self.budgets)
            latency = self.latency(runtime)
        finally:
            del runtime  # free its threads before the next runtime is timed
            gc.collect()
        result = FormatResult(
            target.name, target.precision, target.runtime, target.hardware, bundle_dir=str(bundle),
            size_mb=model_size_mb(model_path), map=maps, parity=parity.to_dict(), latency=latency,
            gate=decision.to_dict(),
        )  # fmt: skip
        meta |= {
            "map": {"pytorch": reference_map, target.name: maps} if maps else None,
            "latency_ms": {k: {"median": v["median_ms"], "p90": v["p90_ms"]}
                           for k, v in latency.items() if isinstance(v, dict)},
            "parity": result.parity,
            "gate": result.gate,
            "size_mb": result.size_mb,
            "hardware": target.hardware,
            "measured_on": {k: self.environment.get(k) for k in ("cpu", "cpu_cores", "cuda", "commit", "ultralytics")}
            | {"threads": self.threads},
            "detkd_version": __version__,
            "source_weights": str(self.weights),
            "recipe": recipe_of(self.weights),
        }  # fmt: skip
        write_bundle(bundle, target, meta)
        return result


def _runtime_device(target: Target) -> str:
    return "GPU" if target.needs_gpu else "CPU"
