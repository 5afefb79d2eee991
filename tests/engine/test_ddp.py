"""DDP on CPU (gloo): KD normalisers reduced over ranks, and a torchrun distil that matches a single process.

What cannot match exactly, and why: the student's BatchNorm normalises each rank's half-batch with its own
statistics (Ultralytics does not convert to SyncBatchNorm), and Ultralytics' own detection loss divides each rank's
sum by that rank's target-score mass floored at 1, so at random initialisation (mass < 1) its box/cls/dfl items
are per-rank shares of the global value. The KD terms are divided by the global batch's normaliser (see
``detkd.losses._checks.normalise_over_ranks``), exactly as a single process would.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from detkd.losses._checks import masked_reduce, normalise_over_ranks
from detkd.losses.logit import sigmoid_kd

# One optimizer step per epoch over all 12 images, no random augmentation: both set-ups see the same data
COMMON = ["--teacher", "yolov8s.yaml", "--student", "yolov8n.yaml", "--epochs", "2", "--imgsz", "64",
          "--batch", "12", "--device", "cpu", "--workers", "0", "--train-arg", "nbs=12", "--train-arg", "val=False",
          "--train-arg", "mosaic=0", "--train-arg", "fliplr=0", "--train-arg", "hsv_h=0", "--train-arg", "hsv_s=0",
          "--train-arg", "hsv_v=0", "--train-arg", "translate=0", "--train-arg", "scale=0",
          "--train-arg", "warmup_epochs=0"]  # fmt: skip
KD = ("train/kd/feat", "train/kd/cls", "train/kd/box")


def _rows(run: Path) -> list[dict[str, float]]:
    return [{k.strip(): float(v) for k, v in r.items()} for r in csv.DictReader((run / "results.csv").open())]


def _global_terms() -> tuple[torch.Tensor, ...]:
    """A batch of 4 whose KD normalisers differ per half (and whose confidence mass is below the floor of 1)."""
    g = torch.Generator().manual_seed(0)
    values = torch.rand(4, 10, generator=g)
    mask = (torch.rand(4, 10, generator=g) > 0.3).float()
    mask[:2, :8] = 0  # the first half has far fewer masked positions than the second
    student, teacher = torch.randn(4, 3, 10, generator=g), torch.randn(4, 3, 10, generator=g) - 6
    return values, mask, student, teacher


def _terms(values, mask, student, teacher) -> torch.Tensor:
    mass = teacher.sigmoid().amax(dim=1).sum()
    return torch.stack(
        [masked_reduce(values, mask, "mean"), sigmoid_kd(student, teacher, normalizer=mass, normalizer_floor=1.0)]
    )


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rank(rank: int, port: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    half = [t[2 * rank : 2 * rank + 2] for t in _global_terms()]

    def rank_mean(t: torch.Tensor) -> torch.Tensor:
        t = t.detach().clone()
        dist.all_reduce(t)
        return t / 2

    with normalise_over_ranks(rank_mean, 2):
        terms = _terms(*half)
    dist.all_reduce(terms)
    torch.save({"mean_over_ranks": terms / 2, "per_rank_plain": _terms(*half)}, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def test_kd_normalisers_over_ranks_give_the_global_batch_value(tmp_path):
    mp.spawn(_rank, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    full = _terms(*_global_terms())
    got = torch.load(tmp_path / "rank0.pt")
    assert torch.allclose(got["mean_over_ranks"], full, rtol=1e-5)
    plain = (got["per_rank_plain"] + torch.load(tmp_path / "rank1.pt")["per_rank_plain"]) / 2
    assert not torch.allclose(plain, full, rtol=0.05)  # per-rank ratios (and floors) would not have matched


def _distill_args(data: Path, project: Path, name: str) -> list[str]:
    return ["-m", "detkd", "distill", *COMMON, "--data", str(data), "--threads", "1", "--project", str(project),
            "--name", name]  # fmt: skip


ENV = {**os.environ, "YOLO_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def runs(tiny_data, tmp_path_factory) -> Path:
    """One process, and two gloo ranks under ``torchrun --standalone``, same global batch: ``single`` and ``ddp``."""
    root = tmp_path_factory.mktemp("ddp")
    single = subprocess.run([sys.executable, *_distill_args(tiny_data, root, "single")], env=ENV,
                            capture_output=True, text=True)  # fmt: skip
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         *_distill_args(tiny_data, root, "ddp")],
        env=ENV, capture_output=True, text=True,
    )  # fmt: skip
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    return root


def _per_rank(run: Path) -> list[list[dict[str, float]]]:
    return [[json.loads(line) for line in (run / f"losses_rank{r}.jsonl").read_text().splitlines()] for r in (0, 1)]


@pytest.mark.slow
def test_two_cpu_ranks_with_gloo_match_a_single_process(runs):
    run = runs / "ddp"
    assert not (runs / "ddp2").exists()  # every rank used rank 0's run folder
    per_rank = _per_rank(run)
    for rows in per_rank:
        assert [r["epoch"] for r in rows] == [1, 2]
        for key in ("kd/feat", "kd/cls", "kd/box"):
            assert all(r[key] > 0 for r in rows), f"{key} is zero on a rank: KD lost under DDP"
    logged, ref = _rows(run), _rows(runs / "single")
    assert len(ref) == len(logged) == 2
    for epoch in (0, 1):
        for key in (*KD, "train/box_loss"):
            mean = (per_rank[0][epoch][key[6:]] + per_rank[1][epoch][key[6:]]) / 2
            assert logged[epoch][key] == pytest.approx(mean, rel=1e-3)  # results.csv holds the mean over ranks
    for key in KD:  # epoch 1 runs from the same weights; only BatchNorm's half-batch statistics differ
        assert logged[0][key] == pytest.approx(ref[0][key], rel=0.15), key
    terms = list(csv.DictReader((run / "kd_terms.csv").open()))  # written once, pooled over both ranks' steps
    assert [r["epoch"] for r in terms] == ["1", "2"]
    for epoch in (0, 1):
        assert float(terms[epoch]["kd/cls"]) == pytest.approx(logged[epoch]["train/kd/cls"], rel=1e-3, abs=1e-5)
        assert float(terms[epoch]["unweighted/kd/feat/p3"]) > 0


@pytest.mark.slow
def test_two_nodes_rendezvous_like_the_docs_and_train_as_one_node_with_two_ranks(runs, tiny_data):
    """docs/scale.md's multi-node command (c10d rendezvous), as two one-process "nodes" on this machine: the same two
    ranks as ``--standalone --nproc_per_node 2``, so the same losses, and the node of rank 1 writes no second run."""
    port, project = _free_port(), runs / "nodes"
    launch = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
              "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", "detkd-test"]  # fmt: skip
    out = {"env": ENV, "stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True}
    nodes = [subprocess.Popen([*launch, "--node_rank", str(i), *_distill_args(tiny_data, project, "run")], **out)
             for i in (0, 1)]  # fmt: skip
    outs = [n.communicate(timeout=600)[0] for n in nodes]
    for n, out in zip(nodes, outs):
        assert n.returncode == 0, out[-3000:]
    assert sorted(p.name for p in project.iterdir()) == ["run"]
    assert (project / "run" / "weights" / "last.pt").is_file()
    got, ref = _rows(project / "run"), _rows(runs / "ddp")
    assert len(got) == len(ref) == 2
    for epoch in (0, 1):
        for key in (*KD, "train/box_loss", "train/cls_loss"):
            assert got[epoch][key] == pytest.approx(ref[epoch][key], rel=1e-4, abs=1e-6), (epoch, key)
    assert [len(rows) for rows in _per_rank(project / "run")] == [2, 2]


def test_a_node_without_a_shared_filesystem_writes_its_own_data_yaml(tmp_path, tiny_data, monkeypatch):
    """The first rank of node 2 does not see node 1's run folder: it writes the same data.yaml for its own ranks;
    on a shared filesystem it leaves rank 0's file alone."""
    from detkd.data.checks import checked_data
    from detkd.engine import distiller, run_folder

    spec = checked_data(tiny_data)
    monkeypatch.setattr(distiller.distributed, "is_main", lambda: False)
    monkeypatch.setattr(distiller.distributed, "is_local_main", lambda: True)
    path = run_folder.write_data(spec, tmp_path / "node2", resuming=False)
    assert path == tmp_path / "node2" / "data.yaml" and "resolved by detkd" in path.read_text()
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "data.yaml").write_text("rank 0's")
    run_folder.write_data(spec, shared, resuming=False)
    assert (shared / "data.yaml").read_text() == "rank 0's"
    monkeypatch.setattr(distiller.distributed, "is_local_main", lambda: False)  # other ranks of the node: no writes
    run_folder.write_data(spec, tmp_path / "other", resuming=False)
    assert not (tmp_path / "other").exists()


@pytest.mark.slow
def test_mutual_learning_under_two_ranks_keeps_every_peer_identical(tiny_data, tmp_path):
    args = [a for a in COMMON if a not in ("--teacher", "yolov8s.yaml")]
    cmd = ["-m", "detkd", "distill", "--peer", "yolov8s.yaml", *args, "--data", str(tiny_data), "--threads", "1",
           "--project", str(tmp_path), "--name", "dml"]  # fmt: skip
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *cmd],
                         env=ENV, capture_output=True, text=True)  # fmt: skip
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    run = tmp_path / "dml"
    per_rank = _per_rank(run)
    key = "peer/1-yolov8s/param_sum"
    for a, b in zip(*per_rank, strict=True):  # rank 0's peer at the start, gradients averaged every step
        assert a[key] == pytest.approx(b[key], rel=1e-9, abs=1e-6)
    assert per_rank[0][0][key] != per_rank[0][1][key]  # and it learned
    assert (run / "weights" / "peers" / "1-yolov8s.pt").is_file()
    assert json.loads((run / "detkd_run.json").read_text())["mutual"]["best"]
