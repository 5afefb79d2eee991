"""Benchmark statistics, suites and reports: pure functions, no training."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from detkd.bench import report, stats
from detkd.bench.suites import SUITES, builtin_kd_applies, get_suite, parse_runs
from detkd.errors import ConfigError


def test_mean_ci_matches_the_t_interval() -> None:
    r = stats.mean_ci([1.0, 2.0, 3.0])
    assert r["mean"] == pytest.approx(2.0)
    assert r["std"] == pytest.approx(1.0)
    half = 4.302652729911275 / math.sqrt(3)  # t(0.975, df=2)
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((2.0 - half, 2.0 + half))
    one = stats.mean_ci([0.5])
    assert one["mean"] == 0.5 and one["std"] is None and one["ci_low"] is None
    assert stats.mean_ci([])["mean"] is None


def test_gap_closed() -> None:
    assert stats.gap_closed(0.02, 0.18, 0.10) == pytest.approx(0.25)
    assert stats.gap_closed(0.02, 0.10, 0.10) is None  # a teacher no better than the baseline: undefined
    assert stats.gap_closed(None, 0.2, 0.1) is None


def _job(run: str, seed: int, m: float, **kw: float) -> dict:
    return {"run": run, "seed": seed, "mAP50-95": m, "mAP50": 2 * m, "APs": None, "APm": m, "APl": m,
            "train_s": 10.0 + seed, "peak_rss_mb": 100.0 + seed, "peak_gpu_mb": None, **kw}  # fmt: skip


def test_summarize_pairs_gains_by_seed() -> None:
    jobs = [_job("baseline", 0, 0.10), _job("baseline", 1, 0.20), _job("detkd", 0, 0.13), _job("detkd", 1, 0.21)]
    summary = stats.summarize(jobs, {"mAP50-95": 0.35}, ("baseline", "detkd"), (0, 1))
    kd = summary["detkd"]
    assert kd["gain"]["mean"] == pytest.approx(0.02)  # paired: (0.03 + 0.01) / 2, not a difference of means only
    assert kd["gain"]["std"] == pytest.approx(math.sqrt(2) * 0.01)
    assert kd["seeds_won"] == 2
    assert kd["gap_closed"] == pytest.approx(0.02 / (0.35 - 0.15))
    assert kd["per_seed"] == {"0": 0.13, "1": 0.21}
    assert kd["peak_rss_mb"] == 101.0 and kd["train_s"] == pytest.approx(10.5)
    assert kd["APs"]["mean"] is None and kd["APm"]["mean"] == pytest.approx(0.17)
    assert "gain" not in summary["baseline"]


def test_summarize_skips_seeds_without_a_baseline() -> None:
    jobs = [_job("baseline", 0, 0.10), _job("detkd", 0, 0.12), _job("detkd", 1, 0.5)]
    kd = stats.summarize(jobs, {"mAP50-95": 0.2}, ("baseline", "detkd"), (0, 1))["detkd"]
    assert kd["gain"]["n"] == 1 and kd["gain"]["mean"] == pytest.approx(0.02)
    assert kd["mAP50-95"]["n"] == 2


def test_suites_and_runs() -> None:
    assert {"smoke", "synthetic", "hit-uav", "hit-uav-cpu", "coco-legacy"} <= set(SUITES)
    with pytest.raises(ConfigError, match="valid: smoke"):
        get_suite("coco-full")
    smoke = get_suite("smoke")
    assert parse_runs(None, smoke)[:2] == ("baseline", "ultralytics-kd")
    assert parse_runs("baseline,detkd", smoke) == ("baseline", "detkd")
    with pytest.raises(ConfigError, match="detkd-feature"):
        parse_runs("baseline,detkd-feat", smoke)
    assert smoke.with_overrides(epochs=2, imgsz=None).epochs == 2
    assert smoke.with_overrides(epochs=2, imgsz=None).imgsz == smoke.imgsz


def test_missing_assets_are_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DETKD_ASSETS", str(tmp_path))
    with pytest.raises(ConfigError, match="hit_uav.yaml not found.*DETKD_ASSETS"):
        get_suite("hit-uav").resolve(get_suite("hit-uav").data)


def test_builtin_kd_needs_an_ultralytics_teacher(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.teachers.legacy_factory import build_legacy_model, save_legacy_checkpoint

    (tmp_path / "weights").mkdir()
    weights = save_legacy_checkpoint(tmp_path / "weights" / "yolov5n-coco-legacy.pt", build_legacy_model()[0])
    monkeypatch.setenv("DETKD_ASSETS", str(tmp_path))
    legacy = get_suite("coco-legacy")
    assert not builtin_kd_applies(legacy)
    assert weights.is_file()
    assert "ultralytics-kd" not in parse_runs(None, legacy)  # dropped from the default runs
    with pytest.raises(ConfigError, match="needs an Ultralytics YOLO teacher"):
        parse_runs("baseline,ultralytics-kd", legacy)  # asked for by name: an error


def _payload(tmp_path: Path) -> dict:
    jobs = [_job("baseline", 0, 0.10), _job("baseline", 1, 0.12), _job("detkd", 0, 0.13), _job("detkd", 1, 0.14)]
    return {
        "kind": "quality",
        "suite": {
            "name": "unit",
            "description": "unit data",
            "epochs": 3,
            "imgsz": 64,
            "batch": 4,
            "train_args": {},
            "kd": [],
            "teacher": "t.yaml",
            "student": "s.yaml",
        },
        "runs": ["baseline", "detkd"],
        "jobs": jobs,
        "seeds": [0, 1],
        "device": "cpu",
        "device_name": "Unit CPU",
        "environment": {"command": "detkd bench quality --suite unit", "commit": "abc1234", "cpu_cores": 2},
        "teacher": {"mAP50-95": 0.3, "mAP50": 0.5, "source": "trained", "params": 1000},
        "summary": stats.summarize(jobs, {"mAP50-95": 0.3}, ("baseline", "detkd"), (0, 1)),
        "wall_s": 120.0,
        "date": "2026-11-24",
    }


def test_quality_markdown_and_results_md(tmp_path: Path) -> None:
    payload = _payload(tmp_path)
    md = report.quality_markdown(payload)
    assert "detkd bench quality --suite unit" in md and "abc1234" in md
    row = next(line for line in md.splitlines() if line.startswith("| detkd: recommended"))
    assert "0.1350 ± 0.0071" in row and "+0.0250" in row and "2/2" in row and "13%" in row  # 0.025 / 0.19
    results = tmp_path / "results"
    results.mkdir()
    (results / "quality_unit_cpu_2026-11-24.json").write_text(json.dumps(payload))
    (results / "quality_unit_cpu_2026-11-24.notes.md").write_text("KD helped on both seeds.")
    out = report.write_results_md(results, tmp_path / "RESULTS.md")
    text = out.read_text()
    assert "## Quality: `unit`" in text and "KD helped on both seeds." in text
    assert "Not recorded yet: `detkd bench quality --suite smoke`" in text  # suites without a result are named
    assert "(results/quality_unit_cpu_2026-11-24.png)" in text
    assert (results / "quality_unit_cpu_2026-11-24.png").stat().st_size > 1000  # re-rendered from the jobs
    assert "0.1350 ± 0.0071" in (results / "quality_unit_cpu_2026-11-24.md").read_text()


def test_offline_suites_check_their_runs_and_split_the_labels(tiny_data: Path, tmp_path: Path) -> None:
    from detkd.bench.quality import student_data

    assert {"synthetic-offline", "synthetic-scarce", "synthetic-crossmodal", "hit-uav-scarce-cpu"} <= set(SUITES)
    smoke = get_suite("smoke")
    with pytest.raises(ConfigError, match="need a suite with unlabeled images"):
        parse_runs("baseline,detkd-unlabeled-soft", smoke)
    with pytest.raises(ConfigError, match="paired modalities"):
        parse_runs("detkd-crossmodal", smoke)
    scarce = smoke.with_overrides(labelled_fraction=0.25)
    data, unlabeled = student_data(scarce, tiny_data, tmp_path)
    labelled = (tmp_path / "split" / "labelled.txt").read_text().split()
    assert unlabeled is not None
    rest = unlabeled.read_text().split()
    assert len(labelled) == 3 and len(rest) == 9 and not set(labelled) & set(rest)  # 12 train images, 1/4 labelled
    from detkd.data.dataset import load_data_spec

    spec = load_data_spec(data)
    assert spec.names == load_data_spec(tiny_data).names and "unlabeled" not in spec.splits
    assert student_data(smoke, tiny_data, tmp_path) == (tiny_data, None)


def test_student_train_args_reach_the_students_only(tiny_data: Path, tmp_path: Path) -> None:
    """A suite's student-only training arguments change every student job and leave the teacher's (and its cache
    key, which is built from the teacher's arguments) as they were."""
    from detkd.bench.quality import Plan, QualityBench

    suite = get_suite("smoke").with_overrides(data=str(tiny_data))
    tuned = suite.with_overrides(student_train_args={"nbs": 16})
    benches = [QualityBench(Plan(s, ("baseline", "detkd"), (0,), "cpu", tmp_path / s.name, tmp_path)) for s in
               (suite, tuned)]  # fmt: skip
    for bench in benches:
        bench._data_yaml, bench._student_data = tiny_data, tiny_data
    plain, nbs = (b._job("baseline", "train", 0, 0, model="yolov8n.yaml") for b in benches)
    assert nbs["train"]["nbs"] == 16 and "nbs" not in plain["train"] and nbs["key"] != plain["key"]
    teachers = [b._job("teacher", "train", None, 0, model=suite.teacher) for b in benches]
    assert teachers[0]["train"] == teachers[1]["train"] and "nbs" not in teachers[1]["train"]
    assert benches[0].teacher_key("fp") == benches[1].teacher_key("fp")


def test_schemes_are_compared_with_plain_kd_and_per_training_hour(tmp_path: Path) -> None:
    jobs = [_job("baseline", 0, 0.10), _job("baseline", 1, 0.20), _job("detkd", 0, 0.13), _job("detkd", 1, 0.21)]
    jobs += [_job("detkd-born-again", s, m, train_s=7200.0) for s, m in ((0, 0.15), (1, 0.20))]
    runs = ("baseline", "detkd", "detkd-born-again")
    summary = stats.summarize(jobs, {"mAP50-95": 0.35}, runs, (0, 1))
    row = summary["detkd-born-again"]
    assert row["vs_kd"]["mean"] == pytest.approx(0.005) and row["seeds_won_vs_kd"] == 1  # +0.02 and -0.01
    assert row["gain_per_hour"] == pytest.approx(0.025 / 2.0)  # gain over the baseline per hour of its training
    assert "vs_kd" not in summary["detkd"]
    payload = {**_payload(tmp_path), "runs": list(runs), "summary": summary}
    md = report.quality_markdown(payload)
    line = [x for x in md.splitlines() if x.startswith("| detkd: born-again")][-1]  # the schemes table
    assert "+0.0050" in line and "1/2" in line and "7200 (" in line and "+0.0125" in line


def test_scheme_runs_plan_their_jobs(tiny_data: Path, tmp_path: Path) -> None:
    from detkd.bench.quality import Plan, QualityBench

    suite = get_suite("synthetic-gap").with_overrides(data=str(tiny_data))
    runs = ("detkd-relation", "detkd-self", "detkd-born-again", "detkd-ta", "detkd-mutual")
    bench = QualityBench(Plan(suite, runs, (0,), "cpu", tmp_path / "w", tmp_path))
    bench._data_yaml, bench._student_data = tiny_data, tiny_data
    jobs = {j["run"]: j for j in bench.student_jobs({"weights": "/t/teacher.pt"})}
    assert "feature.method=relation" in jobs["detkd-relation"]["kd"]
    assert jobs["detkd-self"]["teacher"] == "self" and jobs["detkd-self"]["kind"] == "distill"
    assert jobs["detkd-born-again"]["kind"] == "chain" and jobs["detkd-born-again"]["generations"] == 1
    ta = jobs["detkd-ta"]
    assert ta["kind"] == "chain" and ta["teacher"] == "/t/teacher.pt" and ta["assistants"][0].endswith("yolov8n.yaml")
    assert jobs["detkd-mutual"]["teacher"] is None and jobs["detkd-mutual"]["peers"][0].endswith("yolov8s.yaml")
    no_assistant = QualityBench(Plan(get_suite("smoke").with_overrides(data=str(tiny_data)), ("detkd-ta",), (0,),
                                     "cpu", tmp_path / "w2", tmp_path))  # fmt: skip
    no_assistant._data_yaml, no_assistant._student_data = tiny_data, tiny_data
    with pytest.raises(ConfigError, match="detkd-ta needs the suite's assistant"):
        no_assistant.student_jobs({"weights": "/t/teacher.pt"})
