"""The README's first command: ``detkd demo`` (its --quick form end to end, and its options)."""

from __future__ import annotations

import json

import pytest

from detkd.cli import main


@pytest.mark.slow
@pytest.mark.export
def test_quick_demo_runs_every_stage_and_writes_its_report(tmp_path, capsys):
    assert main(["demo", "--quick", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["wall_time_s"] == report["wall_time_s"]
    assert [m["role"] for m in report["models"]] == ["teacher", "baseline", "KD student"]
    for m in report["models"]:
        assert 0 <= m["mAP50-95"] <= m["mAP50"] <= 1 and m["latency_ms"] > 0 and m["params_m"] > 1
        assert (tmp_path / "runs" / {"teacher": "teacher", "baseline": "baseline"}.get(m["role"], "kd")).is_dir()
    assert set(report["stage_seconds"]) == {"data", "teacher", "baseline", "kd", "eval", "export"}
    assert [r["format"] for r in report["export"]["rows"]] == ["onnx", "openvino-int8"]
    assert report["export"]["rows"][0]["parity"]["passed"]  # ONNX is numerically the PyTorch model
    assert report["epochs"] == 1 and "kd_effect" in report
    assert (tmp_path / "report.md").read_text().startswith("# detkd demo report")
    assert (tmp_path / "report.png").stat().st_size > 1000


def test_demo_epochs_reach_the_config_and_bad_values_are_refused(monkeypatch, capsys, tmp_path):
    import detkd.demo

    seen = []
    monkeypatch.setattr(detkd.demo, "run_demo", lambda cfg: seen.append(cfg) or {})
    assert main(["demo", "--epochs", "7", "--out", str(tmp_path)]) == 0
    assert seen[0].epochs == 7 and not seen[0].quick
    assert main(["demo", "--out", str(tmp_path)]) == 0 and seen[1].epochs == detkd.demo.DemoConfig.epochs
    capsys.readouterr()
    assert main(["demo", "--epochs", "0"]) == 2
    assert "--epochs 0: must be at least 1" in capsys.readouterr().err
    assert main(["demo", "--quick", "--epochs", "3"]) == 2
    assert "--quick always trains one epoch" in capsys.readouterr().err
    assert len(seen) == 2
