"""The teacher cache: what it stores agrees with the live teacher, its key refuses a foreign or stale cache, a
partial build resumes, and a damaged cache is one clear line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from detkd.data.checks import split_report
from detkd.data.dataset import load_data_spec
from detkd.data.soft_labels import split_soft
from detkd.errors import DetkdError, InputFileError
from detkd.losses.box import generalized_iou
from detkd.losses.logit import sigmoid_kd
from detkd.offline.build import build_cache
from detkd.offline.cache import MANIFEST, TeacherCache
from detkd.offline.teacher import CachedTeacher
from detkd.teachers import build_teacher
from detkd.teachers.soft import soft_to_dense
from tests.offline.conftest import training_dataset


def _images(data: Path) -> list[Path]:
    return [s.image for s in split_report(load_data_spec(data), "train").samples]


@pytest.fixture(scope="module")
def teacher_cache(trained_teacher, shapes_data, tmp_path_factory):
    spec = load_data_spec(shapes_data)
    teacher = build_teacher(trained_teacher, nc=spec.nc, names=spec.names)
    out = tmp_path_factory.mktemp("tcache") / "cache"
    build_cache(teacher, str(trained_teacher), _images(shapes_data), out, imgsz=64, names=spec.names, progress=False)
    return out, teacher


def test_cache_targets_agree_with_the_live_teacher_without_augmentation(teacher_cache, shapes_data):
    """With augmentation off the student's input is the cache's letterboxed image, so the cache's class targets
    (its score field) must be the live teacher's at every anchor, within the cache's threshold (0.01, below which
    an anchor is background) plus float16 rounding, and its box targets the live ones (distributions to float16) at
    every anchor above the threshold (``kd.targets.cell_boxes``); boxes IoU >= 0.98 where the teacher is sure. Class
    targets drawn from the soft boxes alone (the centre prior, ``kd.targets``) fit the field far worse."""
    cache_dir, teacher = teacher_cache
    ds = training_dataset(shapes_data, cache_dir, mosaic=0.0, fliplr=0.0, scale=0.0, translate=0.0, hsv_h=0.0,
                          hsv_s=0.0, hsv_v=0.0)  # fmt: skip
    batch = split_soft(next(iter(DataLoader(ds, batch_size=16, shuffle=False, collate_fn=ds.collate_fn))))
    batch["img"] = batch["img"].float() / 255
    live = teacher(batch["img"]).heads["one2many"]
    cached = CachedTeacher(TeacherCache(cache_dir), teacher.specs)
    assert cached.cache.has_field
    cached.cell_boxes = True  # kd.targets.cell_boxes
    dense = cached.from_batch(batch).heads["one2many"]
    p_live, p_cache = live.cls_logits.sigmoid(), dense.cls_logits.sigmoid()
    assert int((p_live >= 0.1).sum()) >= 10
    assert float((p_live - p_cache).abs().max()) <= 0.01 + 2e-3
    peak = p_live.amax(1) >= 0.3  # the anchors whose own box the cache holds
    iou = generalized_iou(live.boxes_xyxy(), dense.boxes_xyxy(), plain=True)
    assert float(iou[peak].mean()) >= 0.98
    # every anchor above the threshold is a cell with its own box: the live distributions, to float16
    cells = p_live.amax(1) >= 0.011
    assert bool(dense.box_valid[cells].all())
    b, _, a = live.box_raw.shape
    d_live = live.box_raw.view(b, 4, -1, a).softmax(2).permute(0, 3, 1, 2)[cells]
    d_cache = dense.box_raw.view(b, 4, -1, a).softmax(2).permute(0, 3, 1, 2)[cells]
    assert float((d_live - d_cache).abs().max()) < 5e-3
    assert float(iou[cells].min()) >= 0.999
    # the rule for caches without a field (centre prior on the soft boxes), over the whole field
    soft = cached.soft_boxes(batch)
    boxes_only = soft_to_dense(soft, 16, (64, 64), (8, 16, 32), centre_sigma=0.4)
    err_field = float((p_live - p_cache).abs().mean())
    err_boxes = float((p_live - boxes_only.cls_logits.sigmoid()).abs().mean())
    assert err_field < 0.5 * err_boxes
    assert float(sigmoid_kd(live.cls_logits, dense.cls_logits)) < float(
        sigmoid_kd(live.cls_logits, boxes_only.cls_logits)
    )


def test_a_cache_of_another_key_is_refused_and_a_partial_one_resumes(trained_teacher, shapes_data, tmp_path):
    spec = load_data_spec(shapes_data)
    teacher = build_teacher(trained_teacher, nc=spec.nc, names=spec.names)
    images = _images(shapes_data)
    out = tmp_path / "c"
    first = build_cache(teacher, str(trained_teacher), images[:40], out, imgsz=64, names=spec.names, progress=False)
    assert (first.images, first.new_images) == (40, 40)
    again = build_cache(teacher, str(trained_teacher), images, out, imgsz=64, names=spec.names, progress=False)
    assert (again.images, again.new_images) == (len(images), len(images) - 40)
    with pytest.raises(InputFileError, match=r"imgsz: cache has 64, asked for 96"):
        build_cache(teacher, str(trained_teacher), images, out, imgsz=96, names=spec.names, progress=False)
    with pytest.raises(InputFileError, match=r"conf: cache has 0.01, asked for 0.05"):
        build_cache(teacher, str(trained_teacher), images, out, imgsz=64, names=spec.names, conf=0.05,
                    progress=False)  # fmt: skip
    with pytest.raises(InputFileError, match=r"max_cells: cache has 2000, asked for 0"):
        build_cache(teacher, str(trained_teacher), images, out, imgsz=64, names=spec.names, max_cells=0,
                    progress=False)  # fmt: skip


def test_a_cache_without_a_score_field_draws_class_targets_from_its_boxes(trained_teacher, shapes_data, tmp_path,
                                                                          caplog):  # fmt: skip
    """``--max-cells 0`` (or a detections-only teacher): no cells; class targets follow ``kd.targets``; distilling
    logit KD from it warns."""
    from detkd.config import kd_config_from_dict
    from detkd.engine.distiller import Distiller

    spec = load_data_spec(shapes_data)
    teacher = build_teacher(trained_teacher, nc=spec.nc, names=spec.names)
    out = tmp_path / "nofield"
    built = build_cache(teacher, str(trained_teacher), _images(shapes_data), out, imgsz=64, names=spec.names,
                        max_cells=0, progress=False)  # fmt: skip
    cache = TeacherCache(out)
    assert built.cells == 0 and cache.cells_total == 0 and not cache.has_field
    ds = training_dataset(shapes_data, out, mosaic=0.0, fliplr=0.0, scale=0.0, translate=0.0)
    batch = split_soft(next(iter(DataLoader(ds, batch_size=8, shuffle=False, collate_fn=ds.collate_fn))))
    cached = CachedTeacher(cache, teacher.specs)
    cached.configure(kd_config_from_dict({"feature": {"weight": 0}, "targets": {"centre_sigma": 0.0}}))
    assert cached.score_field(batch) is None
    soft = cached.soft_boxes(batch)
    want = soft_to_dense(soft, 8, (64, 64), (8, 16, 32), centre_sigma=0.0).cls_logits
    assert torch.allclose(cached.from_batch(batch, soft).heads["one2many"].cls_logits, want)
    with caplog.at_level("WARNING"):
        Distiller(None, "yolov8n.yaml", str(shapes_data), {"feature": {"weight": 0}}, teacher_cache=str(out))
    assert "holds no score field" in caplog.text


def _damage(folder: Path, how: str) -> None:
    shard = sorted(folder.glob("shard-*.safetensors"))[0]
    manifest = json.loads((folder / MANIFEST).read_text())
    if how == "truncated":
        shard.write_bytes(shard.read_bytes()[:-100])
    elif how == "missing":
        shard.unlink()
    elif how == "header":
        shard.write_bytes(b"\xff" * 8 + shard.read_bytes()[8:])
    elif how == "nan":
        data = bytearray(shard.read_bytes())
        n = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + n])
        begin = header["boxes"]["data_offsets"][0]
        data[8 + n + begin : 8 + n + begin + 4] = b"\x00\x00\xc0\x7f"  # float32 NaN
        shard.write_bytes(bytes(data))
    elif how == "version":
        manifest["version"] = 99
        (folder / MANIFEST).write_text(json.dumps(manifest))
    elif how == "path":
        manifest["shards"][0]["file"] = "../../etc/passwd.safetensors"
        (folder / MANIFEST).write_text(json.dumps(manifest))
    elif how == "json":
        (folder / MANIFEST).write_text("{not json")


@pytest.mark.parametrize(
    ("how", "says"),
    [
        ("truncated", "runs past the end"),
        ("missing", "listed in cache.json is missing"),
        ("header", "not a safetensors file"),
        ("nan", "NaN or Inf"),
        ("version", "cache version 99"),
        ("path", "must name a .safetensors file in the cache folder"),
        ("json", "not valid JSON"),
    ],
)
def test_a_damaged_cache_is_one_line_naming_the_file(teacher_cache, tmp_path, how, says):
    folder = tmp_path / "damaged"
    shutil.copytree(teacher_cache[0], folder)
    _damage(folder, how)
    with pytest.raises(InputFileError, match=says) as err:
        TeacherCache(folder)
    assert str(folder) in str(err.value) and "\n" not in str(err.value)


def test_not_a_cache(tmp_path):
    with pytest.raises(InputFileError, match="teacher cache folder not found"):
        TeacherCache(tmp_path / "nowhere")
    with pytest.raises(InputFileError, match="is not a detkd teacher cache"):
        TeacherCache(tmp_path)


def test_a_cached_teacher_refuses_feature_kd_and_live_calls(teacher_cache):
    from detkd.config import load_kd_config

    cached = CachedTeacher(TeacherCache(teacher_cache[0]), teacher_cache[1].specs)
    with pytest.raises(DetkdError, match=r"kd.feature.weight=0"):
        cached.check_recipe(load_kd_config(None))
    cached.check_recipe(load_kd_config(None, ["kd.feature.weight=0"]))
    with pytest.raises(DetkdError, match="training batch only"):
        cached(torch.zeros(1, 3, 64, 64))


def test_a_cache_whose_teacher_file_changed_since_is_flagged(teacher_cache, trained_teacher, tmp_path, caplog):
    from detkd.engine.distiller import _warn_if_stale

    folder = tmp_path / "c"
    shutil.copytree(teacher_cache[0], folder)
    _warn_if_stale(TeacherCache(folder))
    assert "changed since" not in caplog.text
    copy = tmp_path / "teacher.pt"
    copy.write_bytes(Path(trained_teacher).read_bytes())
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["key"]["teacher"] = str(copy)
    manifest["key"]["teacher_files"] = {"teacher.pt": "0" * 64}
    (folder / MANIFEST).write_text(json.dumps(manifest))
    _warn_if_stale(TeacherCache(folder))
    assert "changed since the teacher cache" in caplog.text


def test_format_and_smoke_reports_render():
    from detkd.bench.report import cache_format_markdown, vedai_markdown

    fmt = {
        "images": 10,
        "boxes": 50,
        "classes": 2,
        "reg_max": 16,
        "reads": 5,
        "cache": "c",
        "date": "d",
        "formats": {"a": {"mib_per_1000_images": 1.0, "files": 2, "open_s": 0.1, "read_us_per_image": 30.0}},
    }
    assert "| a | 1.00 | 2 | 0.100 | 30 |" in cache_format_markdown(fmt)
    res = {
        k: {"AP": 0.1, "AP50": 0.2, "seconds": 3.0}
        for k in ("teacher", "teacher_on_rgb", "teacher_on_nir", "baseline", "baseline_on_nir", "kd", "kd_on_nir")
    }
    res["cache"] = {"images": 83, "soft_boxes": 400, "seconds": 5.0}
    text = vedai_markdown({"epochs": 1, "imgsz": 64, "device": "cpu", "commit": "x", "date": "d", "results": res})
    assert "NIR val | 0.1000 / 0.2000" in text


def test_a_distance_head_caches_each_anchor_box_too(shapes_data, tmp_path):
    """A YOLO26 head (``reg_max`` 1: distances, no bins) keeps its anchors' own distances (``cell_ltrb``); with
    augmentation off they come back as the live head's at every anchor above the threshold."""
    from detkd.utils.rng import seeded

    spec = load_data_spec(shapes_data)
    with seeded(0):
        teacher = build_teacher("yolo26n.yaml", nc=spec.nc, names=spec.names)
    out = tmp_path / "c26"
    images = _images(shapes_data)[:16]
    build_cache(teacher, "yolo26n.yaml", images, out, imgsz=64, names=spec.names, progress=False)
    cache = TeacherCache(out)
    assert cache.reg_max == 1 and cache.has_field and cache.cells_total > 0
    ds = training_dataset(shapes_data, out, mosaic=0.0, fliplr=0.0, scale=0.0, translate=0.0, hsv_h=0.0,
                          hsv_s=0.0, hsv_v=0.0, fraction=16 / len(_images(shapes_data)))  # fmt: skip
    batch = split_soft(next(iter(DataLoader(ds, batch_size=16, shuffle=False, collate_fn=ds.collate_fn))))
    batch["img"] = batch["img"].float() / 255
    live = teacher(batch["img"]).heads["one2many"]
    cached = CachedTeacher(cache, teacher.specs)
    cached.cell_boxes = True
    dense = cached.from_batch(batch).heads["one2many"]
    cells = live.cls_logits.sigmoid().amax(1) >= 0.011
    assert int(cells.sum()) > 0 and bool(dense.box_valid[cells].all())
    gap = (live.box_raw - dense.box_raw).abs().permute(0, 2, 1)[cells]
    assert float(gap.max()) < 1e-3
