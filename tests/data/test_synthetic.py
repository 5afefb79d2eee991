import hashlib
import json

import numpy as np

from detkd.data.checks import validate_split
from detkd.data.dataset import load_data_spec
from detkd.data.synthetic import CLASS_NAMES, SceneConfig, generate_dataset, render_scene

CFG = SceneConfig(n_train=6, n_val=4, size=96, min_size=5.0)


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.suffix in {".png", ".txt", ".json"} and p.name != "manifest.json":
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = generate_dataset(tmp_path / "a", CFG, seed=3)
    b = generate_dataset(tmp_path / "b", CFG, seed=3)
    c = generate_dataset(tmp_path / "c", CFG, seed=4)
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)


def test_labels_are_valid_and_consistent_with_coco(tmp_path):
    root = generate_dataset(tmp_path / "d", CFG, seed=0)
    spec = load_data_spec(root / "data.yaml")
    assert spec.names == dict(enumerate(CLASS_NAMES))
    rep = validate_split(spec, "val")  # raises on any invalid row or image
    coco = json.loads((root / "annotations" / "instances_val.json").read_text())
    assert rep.images == len(coco["images"]) == CFG.n_val
    assert rep.boxes == len(coco["annotations"]) > 0
    for ann in coco["annotations"]:
        x, _, w, h = ann["bbox"]
        assert w >= 3 and h >= 3 and x >= 0 and x + w <= CFG.size and 1 <= ann["category_id"] <= len(CLASS_NAMES)


def test_scenes_have_many_sizes_including_small_ones():
    sizes, classes = [], set()
    for i in range(40):
        _, objects = render_scene(np.random.default_rng([0, 0, i]), SceneConfig(size=160, min_size=6.0))
        sizes += [max(o.box[2] - o.box[0], o.box[3] - o.box[1]) for o in objects]
        classes |= {o.cls for o in objects}
    sizes = np.array(sizes)
    assert classes == set(range(len(CLASS_NAMES)))
    assert (sizes < 12).mean() > 0.15  # plenty of small objects
    assert (sizes > 40).mean() > 0.05  # and some large ones


def test_manifest_reuses_matching_data(tmp_path):
    root = generate_dataset(tmp_path / "r", CFG, seed=1)
    marker = root / "images" / "train" / "train_00000.png"
    mtime = marker.stat().st_mtime_ns
    generate_dataset(tmp_path / "r", CFG, seed=1)
    assert marker.stat().st_mtime_ns == mtime
    generate_dataset(tmp_path / "r", CFG, seed=2)  # different parameters: regenerated
    assert json.loads((root / "manifest.json").read_text())["seed"] == 2
