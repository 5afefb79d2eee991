"""``DetectorTrainer``: Ultralytics' ``DetectionTrainer`` subclassed, never copied (the KD trainer builds on it:
:mod:`detkd.engine.kd_trainer`).

It trains a prebuilt (safely loaded) model with Ultralytics' datasets, augmentation, assigner, EMA and checkpoints,
using every CPU core and no network. Both trainers write checkpoints atomically and keep a ``resume.pt`` beside
``last.pt`` (see :mod:`detkd.engine.checkpointing`), from which a killed run continues where its last complete epoch
ended; and both run under ``torchrun`` (see :mod:`detkd.engine.distributed`), on GPUs and, with gloo, on CPUs.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from detkd._offline import offline_env, offline_guards
from detkd.data.checked_dataset import checked_labels
from detkd.data.checks import split_report
from detkd.data.dataset import DataSpec, load_data_spec
from detkd.engine import distributed
from detkd.engine.checkpointing import (
    RESUME_FILE,
    RESUME_FORMAT,
    staged_writes,
    truncate_results_csv,
)
from detkd.engine.kd_terms import KD_TERMS_CSV, plot_kd_terms
from detkd.engine.rng_state import plain, restore_augmenters, restore_rng, rng_state
from detkd.errors import DetkdError
from detkd.logs import logged_as
from detkd.utils.device import set_cpu_threads
from detkd.utils.files import replace_text
from detkd.utils.rng import use_epoch_shuffle

with offline_env():  # Ultralytics reads its offline switches when first imported
    from ultralytics.models.yolo.detect import DetectionTrainer
    from ultralytics.nn.distill_model import DistillationModel
    from ultralytics.utils.torch_utils import strip_optimizer, unwrap_model

LOGGER = logging.getLogger(__name__)


class DetectorTrainer(DetectionTrainer):
    """Train a prebuilt Ultralytics detection model (no KD): teachers and baselines.

    Args:
        model: the model to train (built from YAML or loaded safely by detkd).
        overrides: Ultralytics training arguments (``data`` must be a resolved data YAML).
        threads: torch CPU threads (default: all cores).
        resume_state: the contents of a run's ``resume.pt`` (loaded safely by the caller) to continue from.
        data: the checked data spec whose samples the datasets use (default: ``overrides["data"]``, checked now).
    """

    def __init__(
        self,
        model: nn.Module,
        overrides: dict[str, Any],
        threads: int | None = None,
        resume_state: Mapping[str, Any] | None = None,
        *,
        data: DataSpec | None = None,
    ) -> None:
        if overrides.get("resume"):
            raise DetkdError("pass --resume RUN_DIR to detkd (Ultralytics' resume=... argument is not used by detkd)")
        if data is None:
            data = load_data_spec(overrides["data"])
        for split in ("train", "val"):
            split_report(data, split)
        self.data_spec = data
        self._prebuilt = model
        self._resume_state = resume_state
        self._pending_augment: Mapping[str, Any] | None = None
        # Gradient accumulation across an epoch boundary (see `accumulate`): the iteration of the last optimizer
        # step, this batch's iteration, the partial gradients of a resumed run, the resumed run's step offset.
        self._accumulate = 1
        self._last_step_ni = -1
        self._ni = -1
        self._pending_grads: list[Any] | None = None
        self._step_offset = 0
        # results.csv of a resumed run is kept (Ultralytics deletes it unless its own resume flag is set)
        overrides = {**overrides, "resume": bool(resume_state)}
        with offline_guards():
            super().__init__(overrides=overrides)
        if self.ddp:
            raise DetkdError(
                f"--device {self.args.device}: for several GPUs launch detkd with torchrun, e.g. "
                f"torchrun --nproc_per_node {self.world_size} -m detkd distill ... (see docs/scale.md)"
            )
        if distributed.launched():
            self.world_size = distributed.world_size()
        if self.device.type == "cpu":
            self.args.amp = False  # every rank must agree; CPU training never uses AMP
        self.threads = set_cpu_threads(threads) if self.device.type == "cpu" else None

    @property
    def accumulate(self) -> int:
        """Batches per optimizer step, as Ultralytics reads it.

        Ultralytics decides to step when ``ni - last_opt_step >= accumulate``, with ``last_opt_step`` a local of its
        loop that starts at -1, so a resumed run would step at its first batch even when the uninterrupted run was
        midway through an accumulation. Until a resumed run's first step, ``accumulate`` reads ``L + 1`` higher
        (``L``: the iteration of the last step before the checkpoint), which makes Ultralytics' test exactly the
        uninterrupted one, ``ni - L >= accumulate``; the partial gradients are restored with it.
        """
        return self._accumulate + self._step_offset

    @accumulate.setter
    def accumulate(self, value: int) -> None:
        self._accumulate = int(value)

    def check_resume(self, overrides: dict[str, Any]) -> None:
        """detkd resumes from its own ``resume.pt`` (loaded safely); Ultralytics' path would unpickle ``last.pt``."""
        self.resume = False

    def setup_model(self) -> None:
        self.model: Any = self._prebuilt
        return None

    def set_model_attributes(self) -> None:
        """Ultralytics' attributes; and its built-in KD (``distill_model=``) gets a teacher detkd rebuilt from the
        file's data, where Ultralytics would unpickle the path with plain pickle."""
        super().set_model_attributes()
        teacher = self.args.distill_model
        if isinstance(teacher, (str, Path)) and not isinstance(self.model, DistillationModel):
            from detkd.students import ultralytics_yolo as uy

            self.model = DistillationModel(teacher_model=uy.load_detection_model(teacher), student_model=self.model)

    def build_dataset(self, img_path: str, mode: str = "train", batch: int | None = None) -> Any:
        """Ultralytics' dataset, labelled from detkd's check of the split (no label cache read or written); its
        ``cache=disk`` image files live in the run folder, never beside the user's images. A KD run's training
        set also holds its unlabeled images and, from a teacher cache, the soft boxes of each image."""
        split = "train" if mode == "train" else "val"
        samples = list(self.data_spec.reports[split].samples)
        extra: dict[str, Any] = {}
        if split == "train":
            unlabeled = self.unlabeled_samples()
            if unlabeled:
                samples += unlabeled
                extra["unlabeled"] = {str(s.train_path) for s in unlabeled}
                listed = self.save_dir / "data" / "train_and_unlabeled.txt"
                listed.parent.mkdir(parents=True, exist_ok=True)
                replace_text(listed, "".join(f"{s.train_path}\n" for s in samples))
                img_path = str(listed)
            soft = self.soft_source(samples)
            if soft is not None:
                extra["soft"] = soft
        with checked_labels(samples, npy_dir=self.save_dir / "data" / "npy" / split, **extra):
            return super().build_dataset(img_path, mode, batch)

    def unlabeled_samples(self) -> list[Any]:
        """The unlabeled images this run trains on (a KD run's; none here)."""
        return []

    def soft_source(self, samples: list[Any]) -> Any:
        """Where the training images' soft boxes come from (a KD run from a teacher cache; none here)."""
        return None

    def _setup_ddp(self) -> None:
        """One process per device under torchrun: this rank's GPU (or the CPU with gloo), process group joined."""
        if self.device.type == "cuda":
            torch.cuda.set_device(distributed.local_rank())
            self.device = torch.device("cuda", distributed.local_rank())
        distributed.init(self.device.type)

    def _setup_train(self) -> None:
        with distributed.ddp_without_device_ids() if self.device.type == "cpu" else contextlib.nullcontext():
            super()._setup_train()
        if self._resume_state is not None:
            self.restore(self._resume_state)
        criterion = self.build_criterion()
        for _ in range(self.start_epoch):  # a resumed run: the loss's per-epoch schedule (end-to-end heads)
            if hasattr(criterion, "update"):
                criterion.update()
        self.add_callback("on_train_start", lambda t: t._resume_accumulation())
        self.add_callback("on_train_epoch_start", lambda t: t._start_epoch_batches())
        self.add_callback("on_train_batch_start", lambda t: t._count_batch())

    # --- gradient accumulation across epoch boundaries ------------------------------------------------------------

    def _resume_accumulation(self) -> None:
        """After Ultralytics read its nominal ``accumulate``: offset it until the resumed run's first step."""
        if self._resume_state is not None and self._last_step_ni >= 0:
            self._step_offset = self._last_step_ni + 1

    def _start_epoch_batches(self) -> None:
        self._ni = self.epoch * len(self.train_loader) - 1
        if self._pending_grads is not None:  # after Ultralytics zeroed the gradients at the start of training
            optimizer: Any = self.optimizer
            params = [p for g in optimizer.param_groups for p in g["params"]]
            for p, g in zip(params, self._pending_grads, strict=True):
                p.grad = None if g is None else g.to(p.device, p.dtype).clone()
            self._pending_grads = None

    def _count_batch(self) -> None:
        self._ni += 1

    def optimizer_step(self) -> None:
        """Ultralytics decided to step at this iteration: recorded (for resume), then :meth:`apply_optimizer_step`."""
        self._last_step_ni, self._step_offset = self._ni, 0
        self.apply_optimizer_step()

    def apply_optimizer_step(self) -> None:
        """Ultralytics' optimizer step (clip, step, zero the gradients, update the EMA)."""
        DetectionTrainer.optimizer_step(self)

    def train(self) -> None:
        with offline_guards():
            super().train()

    # --- checkpoints and resume -----------------------------------------------------------------------------------

    def resume_state(self) -> dict[str, Any]:
        """Everything needed to continue this run after the current epoch (see :mod:`detkd.engine.checkpointing`)."""
        stopper = {k: plain(v) for k, v in vars(self.stopper).items() if isinstance(v, (int, float, type(None)))}
        ema: Any = self.ema
        optimizer: Any = self.optimizer
        return {
            "format": RESUME_FORMAT,
            "epoch": self.epoch,
            "epochs": self.epochs,
            "model": unwrap_model(self.model).state_dict(),
            "ema": ema.ema.state_dict(),
            "updates": ema.updates,
            "optimizer": optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "best_fitness": plain(self.best_fitness),
            "stopper": stopper,
            "rng": rng_state(self.train_loader),
            "kd": self.kd_state(),
            "last_step": self._last_step_ni,  # the partial accumulation at the epoch boundary, restored on resume
            "grads": [None if p.grad is None else p.grad.detach().clone() for g in optimizer.param_groups
                      for p in g["params"]],
        }  # fmt: skip

    def plot_metrics(self) -> None:
        """Ultralytics' ``results.png``, and beside it detkd's ``kd_terms.png`` (the KD terms per epoch)."""
        super().plot_metrics()
        path = self.save_dir / KD_TERMS_CSV
        if path.is_file():
            plotted = plot_kd_terms(path)
            if plotted is not None:
                self.on_plot(plotted)

    def kd_state(self) -> dict[str, Any]:
        """State of the KD objective (none without KD)."""
        return {}

    def restore(self, state: Mapping[str, Any]) -> None:
        """Continue from ``state`` (a ``resume.pt``): weights, EMA, optimizer, schedules, random streams. A state
        that does not fit this run (another model, damaged fields) is one error naming the file."""
        try:
            self._restore(state)
        except DetkdError:
            raise
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as e:
            why = " ".join(str(e).split())[:300]
            raise DetkdError(f"{self.wdir / RESUME_FILE}: does not fit this run ({type(e).__name__}: {why})") from e

    def _restore(self, state: Mapping[str, Any]) -> None:
        ema: Any = self.ema
        optimizer: Any = self.optimizer
        scheduler: Any = self.scheduler
        unwrap_model(self.model).load_state_dict(state["model"])
        ema.ema.load_state_dict(state["ema"])
        ema.updates = state["updates"]
        saved = state["optimizer"]
        if len(saved["param_groups"]) != len(optimizer.param_groups):
            raise DetkdError(
                f"resume: the saved optimizer has {len(saved['param_groups'])} parameter groups, this run has "
                f"{len(optimizer.param_groups)} (was the KD config changed since the run started?)"
            )
        for group, live in zip(saved["param_groups"], optimizer.param_groups, strict=True):
            group["fused"] = live.get("fused")  # the device, not the checkpoint, picks the kernel
        optimizer.load_state_dict(saved)
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.best_fitness = state["best_fitness"]
        for key, value in state["stopper"].items():  # numbers only, onto fields the stopper has
            if key not in vars(self.stopper) or not isinstance(value, (int, float, type(None))):
                raise ValueError(f"stopper.{key} = {value!r} is not one of the early stopper's numbers")
        self.stopper.__dict__.update(state["stopper"])
        self.start_epoch = int(state["epoch"]) + 1
        scheduler.last_epoch = self.start_epoch - 1
        self._last_step_ni = int(state.get("last_step", -1))
        self._pending_grads = list(state.get("grads") or []) or None
        if self._pending_grads is not None:
            params = [p for g in optimizer.param_groups for p in g["params"]]
            shapes_ok = len(params) == len(self._pending_grads) and all(
                g is None or (isinstance(g, torch.Tensor) and g.shape == p.shape)
                for p, g in zip(params, self._pending_grads, strict=True)
            )
            if not shapes_ok:
                raise ValueError("the saved gradients do not match the model's parameters")
        restore_rng(state["rng"], self.train_loader)
        self._pending_augment = state["rng"]  # re-applied if Ultralytics rebuilds the augmentations this epoch
        if distributed.is_main():
            truncate_results_csv(self.csv, self.start_epoch)
        LOGGER.info("resuming at epoch %d of %d from %s", self.start_epoch + 1, self.epochs, self.wdir / RESUME_FILE)

    def get_dataloader(self, dataset_path: str, batch_size: int = 16, rank: int = 0, mode: str = "train") -> Any:
        loader = super().get_dataloader(dataset_path, batch_size, rank, mode)
        if mode == "train":
            use_epoch_shuffle(loader)
            self.mix_batches(loader, batch_size)
        return loader

    def mix_batches(self, loader: Any, batch_size: int) -> None:
        """Set the labelled/unlabeled make-up of each training batch (a KD run with unlabeled images)."""
        return None

    def _close_dataloader_mosaic(self) -> None:
        super()._close_dataloader_mosaic()
        pending, self._pending_augment = self._pending_augment, None
        # The continued run closed mosaic before its checkpoint: its rebuilt augmentations resume their streams
        if pending is not None and self.epoch == self.start_epoch > self.epochs - self.args.close_mosaic:
            restore_augmenters(pending, self.train_loader.dataset)

    def build_criterion(self) -> Any:
        """The training loss, set on the student (Ultralytics' own here; built now rather than at the first step)."""
        model: Any = unwrap_model(self.model)
        if getattr(model, "criterion", None) is None:
            model.criterion = model.init_criterion()
        return model.criterion

    def save_model(self) -> bool:
        """Ultralytics' checkpoints plus ``resume.pt``, each written in full, then renamed into place."""
        final = (self.last, self.best, self.wdir)
        order = (RESUME_FILE, "best.pt", "last.pt")
        with staged_writes(self.wdir, f"the epoch-{self.epoch + 1} checkpoints", order) as tmp:
            self.last, self.best, self.wdir = tmp / "last.pt", tmp / "best.pt", tmp
            try:
                super().save_model()
            finally:
                self.last, self.best, self.wdir = final
            torch.save(self.resume_state(), tmp / RESUME_FILE)
        return True

    def final_eval(self) -> None:
        """Ultralytics strips the optimizer from ``last.pt``/``best.pt`` in place; detkd strips copies and renames."""
        cpu_ddp = self.world_size > 1 and self.device.type == "cpu"
        if not distributed.is_main():
            if not cpu_ddp:
                super().final_eval()
            return
        final = (self.last, self.best)
        with staged_writes(self.wdir, "the final checkpoints", ("best.pt", "last.pt")) as tmp:
            for f in final:
                if f.exists():
                    shutil.copy2(f, tmp / f.name)
            self.last, self.best = tmp / "last.pt", tmp / "best.pt"
            try:
                if cpu_ddp:
                    # Ultralytics' standalone validator assumes a GPU per rank: strip only (score with detkd eval)
                    for f in (self.last, self.best):
                        if f.exists():
                            strip_optimizer(f)
                    LOGGER.info("CPU DDP: final validation of best.pt skipped (run detkd eval on it)")
                else:
                    with logged_as(tmp, self.wdir):  # "Validating <staging>/best.pt" would name a passing file
                        super().final_eval()
            finally:
                self.last, self.best = final
        (self.wdir / RESUME_FILE).unlink(missing_ok=True)  # the run is complete: nothing left to resume
