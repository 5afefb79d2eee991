import pytest

from detkd.engine.distiller import Distiller
from detkd.engine.kd_trainer import KDTrainer


@pytest.mark.parametrize(("feature_weight", "expect_adapters"), [(1.0, True), (0.0, False)])
def test_adapters_join_the_optimizer_only_for_feature_kd(tiny_data, tmp_path, feature_weight, expect_adapters):
    d = Distiller("yolov8s.yaml", "yolov8n.yaml", tiny_data, overrides=[f"feature.weight={feature_weight}"])
    overrides = {"model": "yolov8n.yaml", "data": str(d.data.write_resolved(tmp_path / "data.yaml")),
                 "project": str(tmp_path), "name": "t", "device": "cpu", "plots": False}  # fmt: skip
    trainer = KDTrainer(d.student, d.teacher, d.composite, overrides)
    opt = trainer.build_optimizer(d.student)
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    adapter_ids = {id(p) for p in d.composite.adapters.parameters()}
    assert (adapter_ids <= in_opt) is expect_adapters and (adapter_ids & in_opt == set()) is not expect_adapters
    assert {id(p) for p in d.student.parameters()} <= in_opt
    assert not {id(p) for p in d.teacher.parameters()} & in_opt
    groups = [g for g in opt.param_groups if any(id(p) in adapter_ids for p in g["params"])]
    assert all(g["param_group"] in {"weight", "bias"} for g in groups)


def test_students_start_from_the_seed_not_from_the_rng_history(tiny_data):
    import torch

    from detkd.students import ultralytics_yolo as uy
    from detkd.utils.rng import seeded

    d = Distiller("yolov8s.yaml", "yolov8n.yaml", tiny_data)
    torch.rand(1000)  # whatever ran before must not change the initial weights
    a, ca = d._build_student(seed=3)
    b, cb = d._build_student(seed=3)
    c, _ = d._build_student(seed=4)
    first = next(a.parameters())
    assert torch.equal(first, next(b.parameters())) and not torch.equal(first, next(c.parameters()))
    assert torch.equal(next(ca.adapters.parameters()), next(cb.adapters.parameters()))
    with seeded(3):  # a baseline built by train_detector for the same seed starts from the same weights
        base = uy.build_student("yolov8n.yaml", 6, d.data.names)
    assert torch.equal(first, next(base.parameters()))
    state = torch.random.get_rng_state()
    with seeded(5):
        torch.rand(10)
    assert torch.equal(state, torch.random.get_rng_state())


def test_data_is_checked_once_per_spec(tiny_data, monkeypatch):
    from detkd.data import checks
    from detkd.data.dataset import load_data_spec

    calls = []
    real = checks.validate_split
    monkeypatch.setattr(
        checks, "validate_split", lambda spec, split, **kw: calls.append(split) or real(spec, split, **kw)
    )
    spec = load_data_spec(tiny_data)
    Distiller("yolov8s.yaml", "yolov8n.yaml", spec)
    Distiller("yolov8s.yaml", "yolov8n.yaml", spec)
    assert calls == ["train", "val"] and spec.validated


def test_each_step_runs_the_teacher_once_and_before_the_students_forward(tiny_data, tmp_path, monkeypatch):
    from ultralytics.nn.tasks import BaseModel

    from tests.helpers import tiny_distill

    d = Distiller("yolov8s.yaml", "yolov8n.yaml", tiny_data)
    events: list[str] = []
    forward = BaseModel.forward

    def recorded(self, x, *args, **kwargs):  # the trainer's call with the batch starts the student's step
        if isinstance(x, dict):
            events.append("student")
        return forward(self, x, *args, **kwargs)

    monkeypatch.setattr(BaseModel, "forward", recorded)  # a hook would be pickled into the checkpoint
    d.teacher.register_forward_pre_hook(lambda m, a: events.append("teacher"))
    tiny_distill(d, tmp_path)
    steps = events[events.index("student") - 1 :]
    assert steps == ["teacher", "student"] * 2  # two steps (see tiny_distill)
    assert set(events[: -len(steps)]) <= {"teacher"}  # before training: the teacher scored on val


def test_kd_terms_csv_logs_every_named_term_per_epoch(tiny_data, tmp_path):
    import csv

    from tests.helpers import tiny_distill

    d = Distiller("yolov8s.yaml", "yolov8n.yaml", tiny_data)
    last = tiny_distill(d, tmp_path)
    rows = list(csv.DictReader((tmp_path / "kd" / "kd_terms.csv").open()))
    assert len(rows) == 1 and rows[0]["epoch"] == "1"
    row = {k: float(v) for k, v in rows[0].items()}
    levels = [f"unweighted/kd/feat/{p}" for p in ("p3", "p4", "p5")]
    assert set(row) == {"epoch", "kd/feat", "kd/cls", "kd/box", *(f"unweighted/kd/{f}" for f in ("feat", "cls", "box")),
                        *levels}  # fmt: skip
    for term in ("feat", "cls", "box"):  # the weighted means are results.csv's; the unweighted ones come before weights
        assert row[f"kd/{term}"] == pytest.approx(last[f"train/kd/{term}"], rel=1e-3, abs=1e-5)  # csv: 5 decimals
        assert row[f"unweighted/kd/{term}"] > 0
    assert row["unweighted/kd/feat"] == pytest.approx(sum(row[k] for k in levels) / 3, rel=1e-4)


def test_epoch_rows_are_replaced_from_a_resumed_epoch_on(tmp_path, caplog):
    from detkd.engine.kd_terms import write_epoch_row

    path = tmp_path / "kd_terms.csv"
    for epoch in (1, 2, 3):
        write_epoch_row(path, epoch, {"kd/cls": float(epoch)})
    write_epoch_row(path, 2, {"kd/cls": 20.0, "unweighted/kd/cls": 5.0})  # a run resumed at epoch 2
    assert path.read_text().splitlines() == ["epoch,kd/cls,unweighted/kd/cls", "1,1,", "2,20,5"]
    blocked = tmp_path / "blocked.csv"
    blocked.mkdir()  # a directory where the file should be: the log is lost, not the run
    write_epoch_row(blocked, 1, {"kd/cls": 1.0})
    assert "could not write the KD terms of epoch 1" in caplog.text


def test_a_teacher_that_scores_nothing_is_warned_about_and_a_trained_one_is_not(
    tiny_data, trained_teacher, shapes_data, caplog
):
    """Before KD starts, the teacher is scored on val: a random teacher finds about nothing."""
    import logging

    from detkd.data.dataset import load_data_spec
    from detkd.engine.distiller import MIN_TEACHER_MAP50, Distiller, score_teacher
    from detkd.teachers import build_teacher

    d = Distiller("yolov8n.yaml", "yolov8n.yaml", tiny_data)
    with caplog.at_level(logging.WARNING, logger="detkd.engine.distiller"):
        score = d._check_teacher(32, "cpu")
    assert score["mAP50"] < MIN_TEACHER_MAP50 and "it finds about nothing on this data" in caplog.text
    trained = score_teacher(build_teacher(trained_teacher), load_data_spec(shapes_data), 64, "cpu")
    assert trained["mAP50"] > 0.1 and trained["images"] == 16
