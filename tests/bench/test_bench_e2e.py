"""The benchmark harness end to end on tiny data: quality jobs (real training in subprocesses), the teacher cache,
resuming, failures, and the step-time benchmark."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from detkd.bench.quality import Plan, QualityBench, data_fingerprint, write_quality
from detkd.bench.suites import get_suite
from detkd.cli import main
from detkd.errors import DetkdError

TINY = {"n_train": 12, "n_val": 6, "size": 64, "min_size": 5.0}


def _plan(tmp_path: Path, work: str, runs: tuple[str, ...], **suite_changes: object) -> Plan:
    changes = {"scenes": TINY, "epochs": 1, "teacher_epochs": 1, "imgsz": 64, "batch": 4, **suite_changes}
    suite = get_suite("smoke").with_overrides(**changes)
    return Plan(suite=suite, runs=runs, seeds=(0,), device="cpu", work=tmp_path / work, out=tmp_path / "out",
                cache=tmp_path / "cache")  # fmt: skip


def test_quality_bench_runs_every_kind_of_run_and_caches_the_teacher(tmp_path: Path) -> None:
    plan = _plan(tmp_path, "w1", ("baseline", "ultralytics-kd", "detkd"))
    payload = QualityBench(plan).run("pytest")
    assert payload["teacher"]["source"] == "trained" and Path(payload["teacher"]["weights"]).is_file()
    jobs = {j["run"]: j for j in payload["jobs"]}
    assert set(jobs) == {"baseline", "ultralytics-kd", "detkd"}
    for j in jobs.values():
        assert 0.0 <= j["mAP50-95"] <= j["mAP50"] <= 1.0
        assert j["train_s"] > 0 and j["peak_rss_mb"] > 100 and j["params"] > 1e6
    csv = {run: Path(j["results_csv"]).read_text().splitlines()[0] for run, j in jobs.items()}
    assert "dis_loss" in csv["ultralytics-kd"] and "kd/" not in csv["ultralytics-kd"]  # Ultralytics' own KD ran
    assert "kd/cls" in csv["detkd"] and "dis_loss" not in csv["detkd"]
    assert "dis_loss" not in csv["baseline"] and "kd/" not in csv["baseline"]
    # the built-in KD gets the teacher's file, which detkd's trainer loads for it (rebuilt from data, never unpickled)
    spec = json.loads((plan.work / "jobs" / "ultralytics-kd_s0.spec.json").read_text())
    assert spec["train"]["distill_model"].endswith("weights/last.pt") and spec["train"]["dis"] == 6.0
    assert set(payload["summary"]) == {"baseline", "ultralytics-kd", "detkd"}
    assert payload["summary"]["detkd"]["gain"]["n"] == 1

    path = write_quality(payload, plan.out)
    assert path.name == f"quality_smoke_cpu_{payload['date']}.json"
    assert path.with_suffix(".png").stat().st_size > 1000
    md = path.with_suffix(".md").read_text()
    assert "pytest" in md and "| detkd: recommended" in md
    assert json.loads(path.read_text())["environment"]["torch"]

    # same work folder: finished jobs are reused, not rerun
    done = plan.work / "jobs" / "baseline_s0.json"
    stamp = done.stat().st_mtime_ns
    again = QualityBench(_plan(tmp_path, "w1", ("baseline",))).run("pytest")
    assert done.stat().st_mtime_ns == stamp and again["jobs"][0]["mAP50-95"] == jobs["baseline"]["mAP50-95"]

    # another work folder, same data and teacher config: the cached teacher (content hash) is reused
    cached = QualityBench(_plan(tmp_path, "w2", ("baseline",))).run("pytest")
    assert cached["teacher"]["source"] == "cache" and cached["teacher"]["weights"] == payload["teacher"]["weights"]
    # a different teacher schedule is a different cache entry
    plan3 = _plan(tmp_path, "w3", ("baseline",), teacher_epochs=2)
    assert QualityBench(plan3).teacher_key("x") != QualityBench(_plan(tmp_path, "w2", ())).teacher_key("x")

    # a job that fails names itself and its log; the benchmark stops with a clear error
    broken = _plan(tmp_path, "w4", ("baseline",), student="missing_model.yaml")
    with pytest.raises(DetkdError, match=r"baseline_s0 failed \(exit 2\); log .*baseline_s0.log"):
        QualityBench(broken).run("pytest")


def test_data_fingerprint_follows_content(tiny_data: Path, tmp_path: Path) -> None:
    copy = tmp_path / "data"
    shutil.copytree(tiny_data.parent, copy)
    yaml_path = copy / "data.yaml"
    yaml_path.write_text(yaml_path.read_text().replace(str(tiny_data.parent), str(copy)))
    before = data_fingerprint(yaml_path)
    assert before == data_fingerprint(yaml_path)
    label = next((copy / "labels" / "train").glob("*.txt"))
    label.write_text(label.read_text() + "0 0.5 0.5 0.1 0.1\n")
    assert data_fingerprint(yaml_path) != before


def test_bench_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "quality", "--suite", "nope"]) == 2
    assert "unknown benchmark suite 'nope'" in capsys.readouterr().err
    assert main(["bench", "quality", "--suite", "smoke", "--seeds", "0"]) == 2
    assert "--seeds must be at least 1" in capsys.readouterr().err
    assert main(["bench", "quality", "--data", "d.yaml"]) == 2
    assert "needs --teacher" in capsys.readouterr().err
    assert main(["bench", "speed", "--suite", "smoke", "--variants", "plain,fast"]) == 2
    assert "unknown speed variant(s) ['fast']" in capsys.readouterr().err
    assert main(["bench", "report", "--results", str(tmp_path / "none")]) == 2
    assert "not found" in capsys.readouterr().err


def test_speed_bench_times_every_variant_against_the_floor(tiny_data: Path, tmp_path: Path) -> None:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from detkd.bench.report import speed_markdown
    from detkd.bench.speed import SpeedConfig, _Context, _raw_net, _Stepper, build_variant, probe_memory, run_speed

    cfg = SpeedConfig(suite="unit", data=str(tiny_data), teacher="yolov8s.yaml", student="yolov8n.yaml", imgsz=64,
                      batch=4, kd=(), class_map=None, steps=2, reps=2, warmup=1,
                      variants=("plain", "floor", "detkd", "detkd-cache", "ultralytics-kd"))  # fmt: skip
    payload = run_speed(cfg, tmp_path, memory=False, log=lambda m: None)
    rows = payload["variants"]
    assert list(rows) == ["plain", "floor", "detkd", "detkd-cache", "ultralytics-kd"]
    assert payload["cache_build"]["images"] == 12 and payload["cache_build"]["soft_boxes"] > 0
    assert rows["detkd-cache"]["flops_vs_floor"] < 1.0  # no teacher forward in the step
    assert rows["floor"]["vs_floor"] == pytest.approx(1.0) and rows["plain"]["vs_plain"] == pytest.approx(1.0)
    for row in rows.values():
        assert len(row["reps_s"]) == 2 and row["min_s"] <= row["median_s"] <= row["max_s"] and row["min_s"] > 0
        assert len(row["cpu_reps_s"]) == 2 and row["cpu_median_s"] > 0
    # FLOPs: the floor is the student's step plus exactly one teacher forward; detkd adds its adapters on top
    ctx = _Context(cfg)
    teacher = _raw_net(ctx.teacher())  # built outside the counter (building runs a stride-probing forward)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        teacher(ctx.batches[0]["img"])
    teacher_gflops = counter.get_total_flops() / 1e9
    assert rows["floor"]["gflops"] - rows["plain"]["gflops"] == pytest.approx(teacher_gflops, rel=1e-6)
    assert rows["detkd"]["flops_vs_floor"] > 1.0 and rows["floor"]["flops_vs_floor"] == 1.0
    assert "| CPU vs floor |" in speed_markdown(payload)
    # the detkd variant really computes every KD family (a bench of a no-op would be meaningless)
    variant = build_variant("detkd", ctx)
    _Stepper(variant, ctx).step(0)
    criterion = variant.keep[0].criterion
    assert {"kd/feat", "kd/cls", "kd/box"} <= {k for k, v in criterion.last_unweighted.items() if float(v) > 0}
    mem = probe_memory(cfg, "plain")
    assert mem["peak_rss_mb"] > 100 and mem["peak_gpu_mb"] is None


def test_a_teacher_yaml_edited_in_place_is_a_new_cache_entry(tmp_path: Path) -> None:
    import ultralytics

    yaml_path = tmp_path / "my_teacher.yaml"
    source = Path(ultralytics.__file__).parent / "cfg" / "models" / "v8" / "yolov8.yaml"
    yaml_path.write_text(source.read_text())
    bench = QualityBench(_plan(tmp_path, "w", (), teacher=str(yaml_path)))
    before = bench.teacher_key("x")
    assert bench.teacher_key("x") == before  # stable while the file is unchanged
    yaml_path.write_text(source.read_text().replace("nc: 80", "nc: 81"))
    assert bench.teacher_key("x") != before
