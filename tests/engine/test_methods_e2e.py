"""Each KD method trains through the real trainer (Ultralytics' loop, datasets, EMA, checkpoints) on tiny data.

Seven short runs cover every method of every family once, with both balancing modes and a schedule.
"""

import pytest

from detkd.engine.distiller import Distiller
from tests.helpers import tiny_distill

RUNS = {
    "fine_grained+kl+iou": ("yolov8n.yaml", ["feature.method=fine_grained", "logit.method=kl",
                                             "logit.positions=teacher", "logit.teacher_conf=0", "box.method=iou"]),
    "fgd+bckd+bounded_l2": ("yolov8n.yaml", ["feature.method=fgd", "logit.bce.weighting=bckd", "logit.weight=1e4",
                                             "box.method=bounded_l2"]),
    "cwd+quality+ld+balance_loss": ("yolov8n.yaml", ["feature.method=cwd", "logit.bce.weighting=quality",
                                                     "box.method=ld", "balance.mode=loss"]),
    "mgd+bce+iou+balance_grad": ("yolo26n.yaml", ["feature.method=mgd", "balance.mode=grad", "balance.interval=1"]),
    "pkd+bce_assigner+ld+cosine": ("yolov8n.yaml", ["feature.method=pkd", "logit.positions=assigner",
                                                    "feature.schedule.kind=cosine", "box.schedule.kind=linear"]),
    "mse_teacher+bce+iou_all": ("yolov8n.yaml", ["feature.mse.positions=teacher", "box.method=iou",
                                                 "box.positions=all"]),
    "relation+bce+ld": ("yolov8n.yaml", ["feature.method=relation", "box.method=ld"]),
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("run", list(RUNS))
def test_method_trains_end_to_end(run, tiny_data, tmp_path):
    student, overrides = RUNS[run]
    teacher = "yolo26s.yaml" if "26" in student else "yolov8s.yaml"
    d = Distiller(teacher, student, tiny_data, overrides=overrides)
    last = tiny_distill(d, tmp_path)  # also checks that best.pt was written
    assert all(last[f"train/kd/{k}"] > 0 for k in ("feat", "cls", "box")), last
    balanced = "balance" in run
    assert ("train/kd/ratio/feat" in last) is balanced
    if balanced:
        assert last["train/kd/ratio/feat"] > 0 and "val/kd/ratio/feat" not in last
    assert d.composite.cfg.feature.method == overrides[0].split("=")[1].split(".")[0] or "mse" in run
