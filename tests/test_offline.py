"""Nothing downloads at run time: a full distill (plots on) -> eval -> export runs with networking blocked.

The subprocess gets a ``sitecustomize`` that makes every DNS lookup and socket connection fail *and records it*,
and an environment without ``YOLO_OFFLINE``, so the test also proves that detkd switches Ultralytics offline itself.
"""

import os
import subprocess
import sys

import pytest

from tests.helpers import NET_BLOCKER

pytestmark = pytest.mark.slow


def test_distill_eval_export_with_network_blocked(tiny_data, trained_student, shapes_data, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(NET_BLOCKER)
    log = tmp_path / "net.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("YOLO_")}
    env.update(PYTHONPATH=os.pathsep.join([str(site), env.get("PYTHONPATH", "")]), DETKD_NET_LOG=str(log))
    env["HOME"] = str(tmp_path / "home")  # a fresh Ultralytics settings folder, as on a new machine

    def run(*args):
        proc = subprocess.run(
            [sys.executable, "-m", "detkd", *args], env=env, capture_output=True, text=True, timeout=600
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc

    run("distill", "--teacher", "yolov8n.yaml", "--student", "yolov8n.yaml", "--data", str(tiny_data),
        "--epochs", "1", "--imgsz", "64", "--batch", "4", "--device", "cpu", "--project", str(tmp_path / "runs"),
        "--name", "kd")  # fmt: skip
    run_dir = tmp_path / "runs" / "kd"
    # plots are on by default: Ultralytics' (whose font lookup would go online) and detkd's KD plot
    for plot in ("results.png", "kd_terms.png", "labels.jpg", "train_batch0.jpg", "confusion_matrix.png"):
        assert (run_dir / plot).is_file(), (plot, sorted(p.name for p in run_dir.iterdir()))
    best = run_dir / "weights" / "best.pt"
    run("eval", "--model", str(best), "--data", str(tiny_data), "--project", str(tmp_path / "runs"))
    assert (run_dir.parent / "eval" / "PR_curve.png").is_file()  # eval's plots, offline too
    # INT8 calibration is where Ultralytics would fetch COCO8 if it were not given the data; a student that detects
    # something, so every gate can pass (an untrained one's INT8 gate is rightly inconclusive)
    run("export", "--model", str(trained_student / "weights" / "best.pt"), "--data", str(shapes_data), "--format",
        "onnx,openvino-int8,ncnn", "--runs", "2", "--calib-images", "4", "--out", str(tmp_path / "export"))  # fmt: skip
    attempts = log.read_text() if log.exists() else ""
    assert attempts == "", f"network access attempted:\n{attempts}"
