"""One tiny end-to-end run: distill (CLI) -> checkpoint hygiene -> eval (CLI) -> ONNX export with parity (CLI)."""

import csv
import json

import pytest
import torch

from detkd.checkpoints import load_checkpoint
from detkd.cli import main
from detkd.students import ultralytics_yolo as uy

pytestmark = pytest.mark.slow


def test_results_csv_logs_every_loss_term(distilled_run):
    with open(distilled_run / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1
    row = {k.strip(): v for k, v in rows[0].items()}
    for key in ("train/box_loss", "train/cls_loss", "train/dfl_loss", "train/kd/feat", "train/kd/cls", "train/kd/box"):
        assert float(row[key]) > 0, key
    assert not any(k.startswith("val/kd") for k in row)
    assert (distilled_run / "kd.yaml").is_file()
    meta = json.loads((distilled_run / "detkd_run.json").read_text())
    assert meta["kd"]["logit"]["weight"] == 2.0 and meta["box_kd_mode"] == "ld"


def test_checkpoint_holds_only_the_student(distilled_run):
    ckpt = load_checkpoint(distilled_run / "weights" / "best.pt")
    saved = ckpt["model"] if ckpt.get("model") is not None else ckpt["ema"]
    fresh = uy.build_model_from_yaml("yolov8n.yaml", 6, {i: str(i) for i in range(6)})
    assert set(saved.tensors()) == set(fresh.state_dict())
    loaded = uy.load_detection_model(distilled_run / "weights" / "best.pt")
    assert sum(p.numel() for p in loaded.parameters()) == sum(p.numel() for p in fresh.parameters())
    flat = " ".join(ckpt.keys()) + " ".join(saved.tensors())
    assert "teacher" not in flat and "adapter" not in flat
    assert saved.get("criterion") is None


def test_plain_ultralytics_loads_the_student(distilled_run):
    from ultralytics import YOLO

    model = YOLO(str(distilled_run / "weights" / "best.pt"))
    res = model.predict(torch.zeros(1, 3, 64, 64), verbose=False)
    assert len(res) == 1 and model.names[0] == "disk"


def test_eval_cli_prints_metrics_json_last(distilled_run, tiny_data, capsys):
    out = distilled_run / "eval"
    rc = main(["eval", "--model", str(distilled_run / "weights" / "best.pt"), "--data", str(tiny_data),
               "--imgsz", "64", "--out", str(out)])  # fmt: skip
    assert rc == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    metrics = json.loads(last)
    assert {"AP", "AP50", "AP75", "APs", "APm", "APl", "images_per_second"} <= set(metrics)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["metrics"]["AP"] == metrics["AP"] and set(saved["per_class"]) == {
        "disk",
        "ring",
        "square",
        "window",
        "triangle",
        "star",
    }
    assert (out / "metrics.md").read_text().startswith("# COCO evaluation")


@pytest.mark.export
def test_export_cli_onnx_parity_and_bundle(distilled_run, tiny_data, capsys):
    out = distilled_run / "export"
    rc = main(["export", "--model", str(distilled_run / "weights" / "best.pt"), "--format", "onnx",
               "--data", str(tiny_data), "--out", str(out), "--runs", "5"])  # fmt: skip
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["passed"] and summary["formats"]["onnx"]["bundle"] == str(out / "onnx")
    table = json.loads((out / "export_table.json").read_text())
    assert table["imgsz"] == 64  # taken from the training arguments
    [row] = table["rows"]
    assert row["parity"]["max_abs_diff_scores"] < 1e-3 and abs(row["gate"]["delta_points"]) < 0.1
    assert row["latency"]["inference"]["median_ms"] > 0 and table["pytorch"]["latency"]["total"]["median_ms"] > 0
    bundle = out / "onnx"
    assert {p.name for p in bundle.iterdir()} >= {"model.onnx", "labels.json", "metadata.json", "infer.py"}
    meta = json.loads((bundle / "metadata.json").read_text())
    assert meta["recipe"]["kd"]["logit"]["weight"] == 2.0 and meta["classes"]["0"] == "disk"
    assert json.loads((bundle / "labels.json").read_text())[1] == "ring"
