"""``detkd.evaluate``: COCO mAP of a checkpoint on a dataset split in one call (what ``detkd eval`` runs).

It reads the image size the checkpoint was trained at, uses Ultralytics' rectangular validation batches by
default (as ``yolo val`` does), scores the detections with pycocotools and with Ultralytics' own definition, and
writes ``metrics.json``, ``metrics.md`` and Ultralytics' PR/F1/P/R curves and confusion matrices into a numbered
folder under ``runs/detkd`` (``eval``, ``eval2``, ...), as ``yolo val`` writes under ``runs/detect``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from detkd._offline import offline_call
from detkd.eval.coco import EvalResult
from detkd.logs import logged

LOGGER = logging.getLogger(__name__)


def trained_imgsz(model: Any, default: int = 640) -> int:
    """The image size a checkpoint was trained at (its Ultralytics training arguments), else ``default``."""
    args = getattr(model, "args", None)
    value = args.get("imgsz") if isinstance(args, dict) else getattr(args, "imgsz", None)
    if isinstance(value, (list, tuple)) and value:
        value = max(value)
    return int(value) if isinstance(value, (int, float)) and value > 0 else default


@offline_call
@logged
def evaluate_model(
    model: str | Path,
    data: str | Path,
    *,
    split: str = "val",
    imgsz: int | None = None,
    batch: int = 16,
    conf: float = 0.001,
    iou: float = 0.7,
    rect: bool = True,
    device: str | None = None,
    threads: int | None = None,
    class_map: str | Path | None = None,
    bad_samples: str = "skip",
    project: str | Path = "runs/detkd",
    name: str = "eval",
    out: str | Path | None = None,
    plots: bool = True,
    progress: bool = True,
) -> EvalResult:
    """Evaluate the detector at ``model`` (an Ultralytics checkpoint or a classic YOLOv5 one) on ``split``.

    Args:
        model: the ``.pt`` file (read without running code, see :mod:`detkd.checkpoints`).
        data: the data YAML.
        imgsz: the inference size; default: the checkpoint's training size (640 when it does not say).
        batch: images per inference batch (with ``rect``, also the images that share one batch shape).
        rect: Ultralytics' rectangular batches (``yolo val``); False: square letterboxes, as static exports take.
        class_map: YAML mapping the model's classes to the data's (a model trained on other classes).
        out: the report folder; default: a new numbered folder ``project/name``.
        plots: draw Ultralytics' curves and confusion matrices into the report folder.

    Returns:
        The result; ``result.save_dir`` is the report folder.

    Example::

        import detkd
        r = detkd.evaluate("runs/detkd/distill/weights/best.pt", "data.yaml")
        print(r.map50_95, r.yolo["mAP50-95"], r.save_dir)
    """
    from ultralytics.utils.files import increment_path

    from detkd.data.checks import split_report
    from detkd.data.dataset import load_data_spec
    from detkd.errors import ConfigError
    from detkd.eval.coco import evaluate
    from detkd.eval.predict import TorchPredictor, data_class_map, on_data_classes
    from detkd.eval.report import write_eval_report
    from detkd.students import ultralytics_yolo as uy
    from detkd.teachers import load_eval_model
    from detkd.utils.args import check_device, check_imgsz, check_threads
    from detkd.utils.device import set_cpu_threads, torch_device_name
    from detkd.utils.files import check_writable

    check_device(device)
    check_threads(threads)
    if imgsz is not None:
        check_imgsz(imgsz)
    if batch < 1:
        raise ConfigError(f"--batch {batch}: must be at least 1")
    spec = load_data_spec(data)
    split_report(spec, split, bad_samples)
    save_dir = Path(out) if out else None
    created = save_dir is not None and not save_dir.exists()
    if save_dir is not None:
        check_writable(save_dir)  # the caller's folder: refused before the model is read
    try:
        net = load_eval_model(model)
        stride = int(max(net.stride.tolist())) if hasattr(net, "stride") else 32
        cmap = data_class_map(uy.class_names(net), spec.names, class_map, source=model)
        dev = torch_device_name(device)
        if save_dir is None:  # a numbered folder, made once every input was accepted
            save_dir = Path(increment_path(Path(project).resolve() / name, exist_ok=False))
            created = not save_dir.exists()
            check_writable(save_dir)
        if dev == "cpu":
            set_cpu_threads(threads)
        predictor = on_data_classes(TorchPredictor(net, dev), cmap)
        size = imgsz or trained_imgsz(net)
        result = evaluate(predictor, spec, split, imgsz=size, batch=batch, conf=conf, iou=iou, rect=rect, stride=stride,
                          plot_dir=save_dir if plots else None, progress=progress)  # fmt: skip
    except BaseException:  # a refused or failed call leaves no empty report folder behind
        if created and save_dir is not None and save_dir.is_dir() and not any(save_dir.iterdir()):
            save_dir.rmdir()
        raise
    result.save_dir = str(save_dir)
    path = write_eval_report(result, save_dir, f"COCO evaluation of {model}", extra={"model": str(model)})
    LOGGER.info("wrote %s and %s", path, path.with_name("metrics.md"))
    return result
