"""Export targets, budgets and the gate decision: pure logic with reference values (no export runs here)."""

import importlib.util

import numpy as np
import pytest
import torch
from torchvision.ops import batched_nms

from detkd import infer as standalone
from detkd.errors import ConfigError
from detkd.eval.predict import postprocess as detkd_postprocess
from detkd.export.checks import Parity, gate, parse_budget
from detkd.export.targets import TARGETS, FormatUnavailableError, check_available, parse_targets


def test_parse_targets_keeps_order_and_drops_duplicates():
    assert [t.name for t in parse_targets("ncnn, onnx,ncnn,OpenVINO-INT8")] == ["ncnn", "onnx", "openvino-int8"]


def test_unknown_target_suggests_the_closest_and_lists_all():
    with pytest.raises(ConfigError) as e:
        parse_targets("onnx,openvino-in8")
    msg = str(e.value)
    assert "'openvino-in8' (did you mean 'openvino-int8'?)" in msg and "tensorrt-fp16" in msg and "'onnx'" not in msg


def test_every_fallback_is_a_higher_precision_of_the_same_runtime():
    order = {"int8": 0, "fp16": 1, "fp32": 2}
    for t in TARGETS.values():
        if t.fallback:
            f = TARGETS[t.fallback]
            assert f.runtime == t.runtime and order[f.precision] > order[t.precision], t.name


def test_budget_parsing():
    assert parse_budget(None) == {"fp32": 0.5, "fp16": 0.5, "int8": 1.5}
    assert parse_budget("1") == {"fp32": 1.0, "fp16": 1.0, "int8": 1.0}
    assert parse_budget("int8=2.5,fp16=0") == {"fp32": 0.5, "fp16": 0.0, "int8": 2.5}
    for bad, words in (("int4=1", "unknown precision 'int4'"), ("int8=x", "expected a number"),
                       ("fp32=-1", "must be >= 0"), ("lots", "expected a number")):  # fmt: skip
        with pytest.raises(ConfigError, match=words):
            parse_budget(bad)


def _parity(passed=True, tolerance=None):
    return Parity(2, 0.01, 1e-4, 10, 10, 0.99, passed, tolerance or {"scores": 2e-3, "boxes": 0.05})


def _maps(pytorch, exported, name="x"):
    return {"pytorch": {"mAP50-95": pytorch, "mAP50": 0.0}, name: {"mAP50-95": exported, "mAP50": 0.0}}


@pytest.mark.parametrize(
    ("precision", "pytorch", "exported", "passed"),
    [("fp32", 0.300, 0.296, True), ("fp32", 0.300, 0.294, False), ("fp16", 0.300, 0.3051, True),
     ("int8", 0.300, 0.286, True), ("int8", 0.300, 0.284, False)],
)  # fmt: skip
def test_gate_on_map_budget(precision, pytorch, exported, passed):
    tol = None if precision == "int8" else {"scores": 1.0, "boxes": 1.0}
    result = gate("x", precision, _parity(tolerance=tol), _maps(pytorch, exported), parse_budget(None))
    assert result.passed is passed
    assert result.delta_points == pytest.approx((exported - pytorch) * 100)
    assert ("FAIL" in result.reason) is (not passed) and result.reason.startswith("x: mAP50-95")


def test_fp32_gate_also_needs_raw_parity_even_when_map_is_equal():
    result = gate("onnx", "fp32", _parity(passed=False), _maps(0.3, 0.3, "onnx"), parse_budget(None))
    assert not result.passed and "raw outputs" in result.reason and result.reason.endswith("FAIL")


def test_int8_without_data_cannot_be_gated():
    with pytest.raises(ConfigError, match="pass --data"):
        gate("openvino-int8", "int8", Parity(2, 1, 1, 0, 0, None, True, None), None, parse_budget(None))


def test_int8_targets_need_calibration_data():
    with pytest.raises(ConfigError, match="needs calibration images: pass --data"):
        check_available(TARGETS["openvino-int8"], has_data=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without a GPU")
def test_tensorrt_without_gpu_says_why_and_where():
    with pytest.raises(FormatUnavailableError) as e:
        check_available(TARGETS["tensorrt-fp16"], has_data=True)
    msg = str(e.value)
    assert "no CUDA device" in msg and "Jetson" in msg and "--device 0" in msg


def test_missing_runtime_package_names_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ncnn" else real(name, *a))
    with pytest.raises(
        FormatUnavailableError, match=r"ncnn: needs ncnn, not installed here. Install with `pip install ncnn`"
    ):
        check_available(TARGETS["ncnn"])


@pytest.mark.parametrize("seed", range(6))
def test_standalone_nms_equals_detkds_torchvision_postprocess(seed):
    """The bundle's numpy NMS gives the detections detkd's evaluation gives (torchvision batched_nms)."""
    rng = np.random.default_rng(seed)
    nc, anchors = 3, 400
    centers = rng.uniform(0, 160, (anchors, 2))
    sizes = rng.uniform(4, 60, (anchors, 2))
    scores = rng.uniform(0, 1, (anchors, nc)) ** 4
    raw = np.concatenate((centers, sizes, scores), axis=1).T[None].astype(np.float32)
    meta = [standalone.LetterboxMeta(ratio=0.5, left=0, top=20, orig_h=280, orig_w=320)]
    ours = standalone.postprocess(raw, meta, conf=0.05, iou=0.6)[0]
    ref = detkd_postprocess(raw, meta, conf=0.05, iou=0.6)[0]
    assert len(ours) == len(ref) > 20
    order = lambda d: d[np.lexsort((d[:, 0], d[:, 5], -d[:, 4]))]  # noqa: E731
    np.testing.assert_allclose(order(ours), order(ref), atol=1e-4)


def test_standalone_nms_matches_torchvision_on_overlapping_boxes():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 50, (300, 2))
    boxes = np.concatenate((xy, xy + rng.uniform(5, 30, (300, 2))), axis=1).astype(np.float32)
    scores = rng.uniform(0, 1, 300).astype(np.float32)
    ours = standalone.nms(boxes, scores, 0.5)
    ref = batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores), torch.zeros(300, dtype=torch.long), 0.5)
    assert ours.tolist() == ref.tolist()


@pytest.mark.parametrize(
    ("precision", "pytorch"), [("fp32", 0.0), ("fp32", 0.004), ("fp16", 0.004), ("int8", 0.0), ("int8", 0.012)]
)
def test_an_map_check_that_cannot_fail_says_so_and_parity_decides(precision, pytorch):
    """A model scoring about nothing (within the budget of zero, or below 0.01) makes the mAP comparison vacuous: an
    export that detects nothing would pass it. FP32/FP16 are then gated on raw outputs alone; INT8, which has no
    raw-output tolerance, is inconclusive and does not pass."""
    if precision == "int8":
        no_tolerance = Parity(2, 1.0, 0.1, 0, 0, None, True, None)  # INT8: raw outputs have no tolerance
        result = gate("x", "int8", no_tolerance, _maps(pytorch, 0.0), parse_budget(None))
        assert not result.passed and not result.conclusive and "INCONCLUSIVE" in result.reason
        assert "proves nothing" in result.reason
        return
    for parity_ok in (True, False):
        tol = {"scores": 1.0, "boxes": 1.0}
        result = gate("x", precision, _parity(passed=parity_ok, tolerance=tol), _maps(pytorch, 0.0), parse_budget(None))
        assert "proves nothing" in result.reason and "raw outputs" in result.reason
        assert result.passed is parity_ok and result.conclusive


def test_a_meaningful_map_still_gates_on_map():
    result = gate("x", "int8", Parity(2, 1.0, 0.1, 0, 0, None, True, None), _maps(0.08, 0.0), parse_budget(None))
    assert not result.passed and result.conclusive and "FAIL" in result.reason and "proves nothing" not in result.reason
