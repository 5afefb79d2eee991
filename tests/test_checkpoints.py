import pickle
import zipfile

import pytest
import torch

from detkd.checkpoints import UnsafeCheckpointError, load_checkpoint
from detkd.errors import InputFileError
from detkd.students import ultralytics_yolo as uy
from tests.helpers import Evil

from .conftest import assets_path


def test_malicious_checkpoint_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model": Evil(marker)}, path)
    with pytest.raises(UnsafeCheckpointError, match="evil.pt: refusing to load.*(posix|os).system"):
        load_checkpoint(path)
    with pytest.raises(UnsafeCheckpointError):
        uy.load_detection_model(path)
    assert not marker.exists()


def test_unknown_classes_are_refused(tmp_path):
    path = tmp_path / "odd.pt"
    torch.save({"model": zipfile.ZipInfo("x")}, path)
    with pytest.raises(UnsafeCheckpointError, match="zipfile.ZipInfo"):
        load_checkpoint(path)


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(InputFileError, match="weights file not found"):
        load_checkpoint(tmp_path / "none.pt")
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(InputFileError, match="weights file is empty"):
        load_checkpoint(empty)
    text = tmp_path / "text.pt"
    text.write_text("hello")
    with pytest.raises(InputFileError, match="not a PyTorch checkpoint"):
        load_checkpoint(text)
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(InputFileError, match="not a PyTorch checkpoint"):
        load_checkpoint(raw)


def test_ultralytics_checkpoint_loads_safely(distilled_run):
    model = uy.load_detection_model(distilled_run / "weights" / "best.pt")
    assert uy.feature_specs(model)[0].stride == 8
    assert next(model.parameters()).dtype == torch.float32


def test_bare_module_checkpoint(tmp_path):
    model = uy.build_model_from_yaml("yolov8n.yaml", 2, {0: "a", 1: "b"})
    torch.save(model, tmp_path / "bare.pt")
    loaded = uy.load_detection_model(tmp_path / "bare.pt")
    assert sum(p.numel() for p in loaded.parameters()) == sum(p.numel() for p in model.parameters())


@pytest.mark.assets
def test_legacy_yolov5_checkpoint_is_refused_with_a_hint():
    path = assets_path("weights", "yolov5n-coco-legacy.pt")
    with pytest.raises(UnsafeCheckpointError, match="models\\.(common|yolo)\\..*classic YOLOv5"):
        load_checkpoint(path)


def test_final_validation_names_the_checkpoint_that_stays(distilled_run):
    """The final checkpoints are validated while staged, then renamed: the log names the file a user will find."""
    log = (distilled_run.parent / "ultralytics.log").read_text()
    assert f"Validating {distilled_run / 'weights' / 'best.pt'}" in log
    assert ".partial" not in log
