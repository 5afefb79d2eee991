"""Trainers: Ultralytics' ``DetectionTrainer`` subclassed, never copied.

``DetectorTrainer`` trains a prebuilt (safely loaded) model with Ultralytics' datasets, augmentation, assigner, EMA
and checkpoints, using every CPU core and no network. ``KDTrainer`` adds a frozen teacher and the KD objective:

* the KD adapters join the optimizer as extra parameter groups (decay for weights, none for biases);
* after Ultralytics builds its EMA (a copy of the bare student), the student's criterion becomes a
  :class:`~detkd.engine.criterion.KDCriterion`, so each step runs the student once and the teacher once;
* checkpoints hold the student only (the EMA never sees the teacher or adapters), so ``YOLO("best.pt")`` loads
  them with plain Ultralytics.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from torch import nn

from detkd._offline import ensure_offline, offline_guards
from detkd.engine.criterion import KD_ITEM_NAMES, KDCriterion, ratio_item_names
from detkd.errors import DetkdError
from detkd.losses.composite import KDComposite
from detkd.types import Teacher

ensure_offline()

from ultralytics.models.yolo.detect import DetectionTrainer  # noqa: E402
from ultralytics.utils.torch_utils import unwrap_model  # noqa: E402

LOGGER = logging.getLogger(__name__)


def torch_device_name(device: str | int | None) -> str:
    """A torch device from a CLI-style one: ``0`` -> ``cuda:0``; ``cpu`` and ``cuda:1`` unchanged; None -> cpu."""
    text = "cpu" if device is None else str(device)
    return f"cuda:{text}" if text.isdigit() else text


def set_cpu_threads(threads: int | None) -> int:
    """Use ``threads`` (default: every core) for torch on CPU; Ultralytics leaves one core idle otherwise."""
    n = threads or os.cpu_count() or 1
    torch.set_num_threads(n)
    return n


class DetectorTrainer(DetectionTrainer):
    """Train a prebuilt Ultralytics detection model (no KD): teachers and baselines.

    Args:
        model: the model to train (built from YAML or loaded safely by detkd).
        overrides: Ultralytics training arguments (``data`` must be a resolved data YAML).
        threads: torch CPU threads (default: all cores).
    """

    def __init__(self, model: nn.Module, overrides: dict[str, Any], threads: int | None = None) -> None:
        if overrides.get("resume"):
            raise DetkdError("resuming a detkd run is not supported yet: start a new run (resume is planned with DDP)")
        self._prebuilt = model
        with offline_guards():
            super().__init__(overrides=overrides)
        if self.ddp:
            raise DetkdError("multi-GPU training is not supported yet: pass a single --device (e.g. 0 or cpu)")
        self.threads = set_cpu_threads(threads) if self.device.type == "cpu" else None

    def setup_model(self) -> None:
        self.model: Any = self._prebuilt
        return None

    def train(self) -> None:
        with offline_guards():
            super().train()


class KDTrainer(DetectorTrainer):
    """Distil a frozen teacher into the student while it trains.

    Args:
        model: the student.
        teacher: the frozen teacher.
        composite: the KD objective for this pair (holds the adapters).
        overrides, threads: as for :class:`DetectorTrainer`.
    """

    def __init__(
        self,
        model: nn.Module,
        teacher: Teacher,
        composite: KDComposite,
        overrides: dict[str, Any],
        threads: int | None = None,
    ) -> None:
        self.teacher = teacher
        self.composite = composite
        super().__init__(model, overrides, threads)

    def setup_model(self) -> None:
        super().setup_model()
        self.teacher.to(self.device)
        self.composite.to(self.device)
        return None

    def build_optimizer(
        self,
        model: nn.Module,
        name: str = "auto",
        lr: float = 0.001,
        momentum: float = 0.9,
        decay: float = 1e-5,
        iterations: float = 1e5,
    ) -> torch.optim.Optimizer:
        optimizer = super().build_optimizer(model, name, lr, momentum, decay, iterations)
        if not self.composite.use_feature:  # adapters and method modules only serve feature imitation
            return optimizer
        params = list(self.composite.parameters())
        weights = [p for p in params if p.dim() > 1]  # conv kernels decay; biases and norm scales do not
        others = [p for p in params if p.dim() <= 1]
        optimizer.add_param_group({"params": weights, "weight_decay": decay, "param_group": "weight"})
        optimizer.add_param_group({"params": others, "weight_decay": 0.0, "param_group": "bias"})
        LOGGER.info(
            "KD modules (adapters + %s): %d parameters added to the optimizer",
            self.composite.cfg.feature.method,
            sum(p.numel() for p in params),
        )
        return optimizer

    def _setup_train(self) -> None:
        super()._setup_train()  # builds the EMA from the bare student: the teacher never enters a checkpoint
        student: Any = unwrap_model(self.model)
        criterion = KDCriterion(student, self.teacher, self.composite)
        student.criterion = criterion
        self.add_callback(
            "on_train_epoch_start", lambda t: criterion.start_epoch(t.epoch, t.epochs, len(t.train_loader))
        )

    def label_loss_items(self, loss_items: dict | None = None, prefix: str = "train") -> Any:
        """Validation runs the bare student (no teacher), so KD items are logged for training only."""
        items = super().label_loss_items(loss_items, prefix)
        if prefix == "train":
            return items
        kd = tuple(f"{prefix}/{k}" for k in (*KD_ITEM_NAMES, *ratio_item_names(self.composite)))
        if isinstance(items, dict):
            return {k: v for k, v in items.items() if k not in kd}
        return [k for k in items if k not in kd]
