"""Real exports of a tiny distilled student: ONNX, OpenVINO FP32 and INT8, NCNN; gate, bundles, standalone script."""

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from detkd import infer as standalone
from detkd.cli import main
from detkd.data.dataset import list_images, load_data_spec
from detkd.eval.predict import postprocess, preprocess, read_image
from detkd.export import export_models
from detkd.infer.script import standalone_script

pytestmark = [pytest.mark.export, pytest.mark.slow]
FORMATS = ["onnx", "openvino", "openvino-int8", "ncnn"]
# Runs a bundle's infer.py with detkd and torch made unimportable, as on a device that has only the runtime.
NO_DETKD = "import runpy, sys; sys.modules['detkd'] = None; sys.modules['torch'] = None; "


@pytest.fixture(scope="module")
def exported(trained_student, shapes_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("export")
    table = export_models(trained_student / "weights" / "best.pt", FORMATS, data=shapes_data, calib_images=4,
                          latency_runs=3, out_dir=out, threads=2)  # fmt: skip
    return table, out


def test_every_format_is_exported_gated_and_timed(exported):
    table, out = exported
    assert [r.format for r in table.rows] == FORMATS and table.passed
    for r in table.rows:
        assert r.passed, r.gate
        assert r.map is not None and 0 <= r.map["mAP50-95"] <= 1
        assert r.latency["inference"]["median_ms"] > 0 and r.latency["postprocess"]["median_ms"] > 0
        assert r.size_mb > 0.5
        if r.precision == "fp32":  # numerically the same model: raw outputs and mAP agree
            assert r.parity["passed"] and r.parity["max_abs_diff_scores"] < 2e-3
            assert abs(r.gate["delta_points"]) < 0.05
    assert table.row("openvino-int8").size_mb < 0.5 * table.row("openvino").size_mb  # weights really are INT8
    saved = json.loads((out / "export_table.json").read_text())
    assert saved["passed"] and [r["format"] for r in saved["rows"]] == FORMATS
    md = (out / "export_table.md").read_text()
    assert "| openvino-int8 | int8 | openvino |" in md and "Gate decisions:" in md


def test_bundle_holds_model_labels_metadata_and_script(exported, trained_student):
    _, out = exported
    bundle = out / "openvino-int8"
    meta = json.loads((bundle / "metadata.json").read_text())
    assert meta["runtime"] == "openvino" and meta["precision"] == "int8" and meta["imgsz"] == [64, 64]
    assert (bundle / meta["model"]).is_dir() and any((bundle / meta["model"]).glob("*.xml"))
    assert meta["classes"] == {"0": "shape"} and json.loads((bundle / "labels.json").read_text()) == ["shape"]
    assert meta["recipe"]["kd"]["logit"]["weight"] == 2.0 and meta["gate"]["passed"]
    assert meta["map"]["openvino-int8"]["mAP50-95"] >= 0 and meta["latency_ms"]["inference"]["median"] > 0
    assert meta["measured_on"]["threads"] == 2 and meta["measured_on"]["cpu_cores"] >= 1
    assert (bundle / "infer.py").read_text() == standalone_script()
    assert "pip install numpy opencv-python-headless openvino" in (bundle / "README.md").read_text()


def _script_proc(bundle: Path, *args: str, block: str = "") -> subprocess.CompletedProcess:
    code = (NO_DETKD + block + f"sys.argv = ['infer.py', *{list(args)!r}]; "
            "runpy.run_path('infer.py', run_name='__main__')")  # fmt: skip
    return subprocess.run([sys.executable, "-c", code], cwd=bundle, capture_output=True, text=True, timeout=300)


def _script(bundle: Path, *args: str) -> list[dict]:
    proc = _script_proc(bundle, *args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return [json.loads(line) for line in proc.stdout.splitlines()]


def test_standalone_script_errors_are_one_clear_line(exported, tmp_path):
    _, out = exported
    cases = [
        ((str(tmp_path / "missing.jpg"),), "", "missing.jpg: not found or does not decode as an image"),
        (("x.jpg", "--bundle", str(tmp_path)), "", "metadata.json: not found; is"),
        (("x.jpg",), "sys.modules['onnxruntime'] = None; ", "this bundle needs its runtime"),
    ]
    for args, block, words in cases:
        proc = _script_proc(out / "onnx", *args, block=block)
        assert proc.returncode == 2 and words in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.parametrize("fmt", FORMATS)
def test_standalone_script_matches_detkds_prediction(exported, shapes_data, fmt):
    _, out = exported
    bundle = out / fmt
    image = list_images(load_data_spec(shapes_data), "val")[0]
    [record] = _script(bundle, str(image), "--conf", "0.0002")
    ours = np.array([[*d["box"], d["score"], d["class_id"]] for d in record["detections"]]).reshape(-1, 6)

    runtime, meta = standalone.load_bundle(bundle)  # detkd's own prediction: same runtime, torchvision NMS
    x, metas = preprocess([read_image(image)], meta["imgsz"][0])
    ref = postprocess(runtime(x), metas, conf=0.0002, iou=meta["thresholds"]["iou"])[0]
    assert len(ours) == len(ref) > 0
    unmatched = list(range(len(ours)))
    for det in ref:  # the script rounds boxes to 0.01 px and scores to 6 significant digits
        close = [i for i in unmatched if ours[i, 5] == det[5] and np.abs(ours[i, :4] - det[:4]).max() <= 0.011
                 and abs(ours[i, 4] - det[4]) <= 1e-5 * det[4]]  # fmt: skip
        assert close, f"detkd's detection {det} is missing from the script's output"
        unmatched.remove(close[0])
    assert {d["label"] for d in record["detections"]} <= set(meta["classes"].values())


def test_standalone_script_runs_a_folder_and_a_video(exported, shapes_data, tmp_path):
    _, out = exported
    images = list_images(load_data_spec(shapes_data), "val")[:3]
    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter.fourcc(*"mp4v"), 5, (64, 64))
    for p in images:
        writer.write(cv2.resize(read_image(p), (64, 64)))
    writer.release()
    frames = _script(out / "onnx", str(video), "--conf", "0.01", "--save", str(tmp_path / "drawn"))
    assert [r["frame"] for r in frames] == [0, 1, 2] and (tmp_path / "drawn" / "clip.mp4").stat().st_size > 0
    folder = _script(out / "onnx", str(images[0].parent), "--conf", "0.01", "--save", str(tmp_path / "drawn"))
    assert len(folder) == len(list(images[0].parent.iterdir()))
    assert (tmp_path / "drawn" / images[0].name).is_file()


def test_a_broken_export_fails_the_gate(trained_student, shapes_data, tmp_path, monkeypatch, capsys):
    """An ONNX file whose class head was damaged after conversion: the gate must catch it and exit non-zero."""
    import onnx
    from onnx import numpy_helper

    from detkd.export import convert as convert_mod

    real = convert_mod.convert
    damaged: list[str] = []

    def broken(*args, **kwargs):
        path = real(*args, **kwargs)
        model = onnx.load(path)
        for init in model.graph.initializer:  # the class logits' bias (last conv of each class branch) shifted
            if ".cv3." in init.name and init.name.endswith(".2.bias"):
                init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) + 3.0, init.name))
                damaged.append(init.name)
        onnx.save(model, path)
        return path

    monkeypatch.setattr(convert_mod, "convert", broken)
    rc = main(["export", "--model", str(trained_student / "weights" / "best.pt"), "--format", "onnx",
               "--data", str(shapes_data), "--runs", "2", "--out", str(tmp_path)])  # fmt: skip
    assert rc == 1 and len(damaged) == 3
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert not summary["passed"] and "raw outputs" in summary["formats"]["onnx"]["gate"]
    assert summary["formats"]["onnx"]["gate"].endswith("FAIL")
    assert not json.loads((tmp_path / "onnx" / "metadata.json").read_text())["gate"]["passed"]


def test_one_format_failing_to_convert_does_not_lose_the_others(trained_student, tmp_path, monkeypatch, capsys, caplog):
    from detkd.errors import DetkdError
    from detkd.export import convert as convert_mod

    real = convert_mod.convert

    def flaky(model, target, *args, **kwargs):
        if target.name == "ncnn":
            raise DetkdError("ncnn: Ultralytics' ncnn export failed: simulated converter crash")
        return real(model, target, *args, **kwargs)

    monkeypatch.setattr(convert_mod, "convert", flaky)
    rc = main(["export", "--model", str(trained_student / "weights" / "best.pt"), "--format", "ncnn,onnx",
               "--runs", "2", "--out", str(tmp_path)])  # fmt: skip
    assert rc == 1
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["formats"]["onnx"]["passed"] and "simulated converter crash" in summary["formats"]["ncnn"]["error"]
    assert "**ERROR**: ncnn: Ultralytics' ncnn export failed" in (tmp_path / "export_table.md").read_text()
    assert "export failed: ncnn: ncnn: Ultralytics' ncnn export failed" in caplog.text


def test_fallback_exports_the_next_precision_when_int8_fails(trained_student, shapes_data, tmp_path, monkeypatch):
    from detkd.export import checks

    real = checks.gate

    def strict_int8(name, precision, parity, maps, budget):
        result = real(name, precision, parity, maps, budget)
        if precision == "int8":  # as if INT8 had lost too much accuracy on this model
            result.passed, result.reason = False, result.reason + " (forced FAIL for the test)"
        return result

    monkeypatch.setattr(checks, "gate", strict_int8)
    table = export_models(trained_student / "weights" / "best.pt", "openvino-int8", data=shapes_data, calib_images=4,
                          latency_runs=2, out_dir=tmp_path, fallback=True)  # fmt: skip
    assert [r.format for r in table.rows] == ["openvino-int8", "openvino-fp16"]
    assert table.row("openvino-int8").fallback_to == "openvino-fp16" and not table.row("openvino-int8").passed
    assert table.deployable("openvino-int8").format == "openvino-fp16" and table.passed
    assert "fell back to openvino-fp16" in (tmp_path / "export_table.md").read_text()


def test_image_size_must_fit_the_stride(trained_student, tmp_path, capsys):
    rc = main(["export", "--model", str(trained_student / "weights" / "best.pt"), "--imgsz", "150",
               "--out", str(tmp_path / "x")])  # fmt: skip
    assert rc == 2 and "--imgsz 150: must be a multiple of the model's stride 32 (e.g. 160)" in capsys.readouterr().err


@pytest.mark.parametrize(("option", "value"), [("--runs", "0"), ("--calib-images", "0"), ("--threads", "-1")])
def test_bad_export_numbers_are_refused_before_work(trained_student, tmp_path, capsys, option, value):
    rc = main(["export", "--model", str(trained_student / "weights" / "best.pt"), option, value,
               "--out", str(tmp_path / "x")])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and (
        f"{option} {value}: must be at least 1" in err or f"{option} {value}: must be an integer >= 1" in err
    )
    assert not (tmp_path / "x").exists()


def test_litert_export_when_its_converter_is_installed(trained_student, shapes_data, tmp_path):
    pytest.importorskip("litert_torch", reason="LiteRT converter not installed (pip install 'detkd[litert]')")
    table = export_models(trained_student / "weights" / "best.pt", "litert", data=shapes_data, latency_runs=2,
                          out_dir=tmp_path)  # fmt: skip
    assert table.passed and table.row("litert").parity["passed"]


@pytest.fixture(scope="module")
def yolo26_weights(tmp_path_factory):
    import torch

    from detkd.students import ultralytics_yolo as uy

    model = uy.build_model_from_yaml("yolo26n.yaml", 3, {0: "a", 1: "b", 2: "c"})
    weights = tmp_path_factory.mktemp("y26") / "yolo26n.pt"
    torch.save({"model": model}, weights)
    return weights


def test_yolo26_exports_nms_free_where_the_format_can(yolo26_weights, tmp_path):
    """--end2end: the one-to-one head (boxes, score, class; no NMS) in ONNX/OpenVINO; NCNN keeps NMS outside."""
    table = export_models(yolo26_weights, "onnx,openvino,ncnn", imgsz=64, latency_runs=2, out_dir=tmp_path,
                          end2end=True)  # fmt: skip
    for r in table.rows:
        assert r.passed, r.gate
        assert r.map is None and "raw outputs" in r.gate["reason"]
    for fmt, e2e in (("onnx", True), ("openvino", True), ("ncnn", False)):
        runtime, meta = standalone.load_bundle(tmp_path / fmt)
        assert meta["end2end"] is e2e, fmt
        assert meta["preprocessing"]["output"].startswith("(1, N, 6)" if e2e else "(1, 4 + nc"), fmt
        out = runtime(np.zeros((2, 3, 64, 64), np.float32))
        # 84 anchor points at 64 px: the one-to-one head keeps min(300, 84) boxes of (x1, y1, x2, y2, score, class)
        assert out.shape[1:] == ((84, 6) if e2e else (4 + 3, 84)), (fmt, out.shape)
    assert table.pytorch["end2end"] is True


def test_end2end_needs_a_one_to_one_head(trained_student, capsys):
    rc = main(["export", "--model", str(trained_student / "weights" / "best.pt"), "--end2end"])
    assert rc == 2 and "--end2end needs a one-to-one (NMS-free) head" in capsys.readouterr().err


def test_yolo26_default_export_uses_the_one_to_many_head_and_nms(yolo26_weights, tmp_path):
    table = export_models(yolo26_weights, "onnx", imgsz=64, latency_runs=2, out_dir=tmp_path)
    assert table.passed
    runtime, meta = standalone.load_bundle(tmp_path / "onnx")
    assert meta["end2end"] is False and runtime(np.zeros((1, 3, 64, 64), np.float32)).shape[1] == 4 + 3


def test_tensorrt_export_on_a_gpu(trained_student, shapes_data, tmp_path):
    """Runs only where an NVIDIA GPU, TensorRT and cuda-python are installed (skipped on CPU machines and in CI)."""
    import importlib.util

    import torch

    if not torch.cuda.is_available():
        pytest.skip("TensorRT needs an NVIDIA GPU; this machine has none")
    for module in ("tensorrt", "cuda"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed (pip install tensorrt cuda-python)")
    table = export_models(trained_student / "weights" / "best.pt", "tensorrt,tensorrt-fp16", data=shapes_data,
                          latency_runs=5, out_dir=tmp_path, device="0")  # fmt: skip
    assert table.passed, [r.gate for r in table.rows]
    assert table.row("tensorrt").parity["passed"]
    [record] = _script(
        tmp_path / "tensorrt", str(list_images(load_data_spec(shapes_data), "val")[0]), "--conf", "0.0002"
    )
    assert record["detections"]
