"""``Distiller.add_callback``: a Python hook on Ultralytics' training events that sees the KD terms, the same
``train/kd/*`` items Ultralytics' loggers (TensorBoard, MLflow, W&B, Comet) record."""

from __future__ import annotations

import pytest

from detkd import Distiller
from detkd.errors import ConfigError
from tests.helpers import tiny_distill


def test_callbacks_see_the_kd_terms_every_epoch(tiny_data, tmp_path):
    d = Distiller("yolov8n.yaml", "yolov8n.yaml", tiny_data, allow_random_teacher=True)
    seen: list[dict] = []

    def record(trainer) -> None:
        seen.append({"epoch": trainer.epoch, "terms": dict(trainer.kd_terms),
                     "logged": trainer.label_loss_items(trainer.tloss, prefix="train")})  # fmt: skip

    d.add_callback("on_train_epoch_end", record)
    tiny_distill(d, tmp_path)
    assert [s["epoch"] for s in seen] == [0]
    terms, logged = seen[0]["terms"], seen[0]["logged"]
    assert {"kd/cls", "kd/box", "kd/feat"} <= set(terms) and any(k.startswith("unweighted/kd/feat/") for k in terms)
    # what Ultralytics' logger integrations receive: the weighted KD terms beside the detection losses
    assert {"train/box_loss", "train/kd/cls", "train/kd/box", "train/kd/feat"} <= set(logged)
    assert logged["train/kd/cls"] == pytest.approx(terms["kd/cls"], abs=1e-5)  # (Ultralytics rounds to 5 digits)


def test_an_unknown_event_is_a_one_line_error(tiny_data):
    d = Distiller("yolov8n.yaml", "yolov8n.yaml", tiny_data, allow_random_teacher=True)
    with pytest.raises(
        ConfigError, match="callback event 'on_train_epoch_ends' does not exist .did you mean 'on_train_epoch_end'"
    ):
        d.add_callback("on_train_epoch_ends", print)
