"""Out of memory during training, told as advice: what to lower (batch, image size, workers, the teacher's cost)."""

from __future__ import annotations

import torch

from detkd.engine.kd_trainer import KDTrainer
from detkd.engine.trainer import DetectorTrainer


def out_of_memory(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()


def oom_advice(trainer: DetectorTrainer) -> str:
    args = trainer.args
    batch = int(trainer.batch_size)
    teacher = "" if not isinstance(trainer, KDTrainer) else (
        " the teacher runs in fp16 under AMP already; a smaller teacher also helps." if trainer.amp
        else " turn AMP on (--train-arg amp=True) so the teacher runs in fp16."
    )  # fmt: skip
    return (
        f"out of memory on {trainer.device} at epoch {trainer.epoch + 1} (batch {batch}, imgsz {args.imgsz}): "
        f"lower --batch (e.g. {max(batch // 2, 1)}) or --imgsz;{teacher} The last complete epoch can be resumed "
        f"with --resume {trainer.save_dir}"
    )
