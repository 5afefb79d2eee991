"""``KDTrainer``: Ultralytics' ``DetectionTrainer`` (through :class:`~detkd.engine.trainer.DetectorTrainer`) with a
frozen teacher and the KD objective.

* the KD adapters join the optimizer as extra parameter groups (decay for weights, none for biases);
* after Ultralytics builds its EMA (a copy of the bare student), the student's criterion becomes a
  :class:`~detkd.engine.criterion.KDCriterion`, so each step runs the student once and the teacher once (the
  teacher first, from ``preprocess_batch``, inside the same autocast);
* checkpoints hold the student only (the EMA never sees the teacher or adapters), so ``YOLO("best.pt")`` loads
  them with plain Ultralytics;
* the epoch's KD terms go to ``kd_terms.csv`` / ``kd_terms.png`` (:mod:`detkd.engine.kd_terms`) and to Ultralytics'
  loggers.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from ultralytics.utils.torch_utils import ModelEMA

from detkd._offline import offline_env
from detkd.data.dataset import DataSpec
from detkd.data.soft_labels import MixedBatches, split_soft
from detkd.engine import distributed
from detkd.engine.criterion import KD_ITEM_NAMES, KDCriterion, NonFiniteLossError, ratio_item_names
from detkd.engine.kd_terms import KD_TERMS_CSV, write_epoch_row
from detkd.engine.mutual import MutualCriterion, Peer, PeerView
from detkd.engine.trainer import DetectorTrainer
from detkd.errors import DetkdError
from detkd.losses.composite import KDComposite
from detkd.offline.source import SoftLabelSource
from detkd.offline.teacher import CachedTeacher
from detkd.teachers.self_teacher import EMATeacher
from detkd.types import Teacher
from detkd.utils.rng import epoch_shuffle

with offline_env():  # Ultralytics reads its offline switches when first imported
    from ultralytics.utils.torch_utils import unwrap_model


def _add_groups(optimizer: torch.optim.Optimizer, params: list[nn.Parameter], decay: float) -> None:
    """Extra parameters in two groups like Ultralytics': kernels with weight decay, biases and norm scales without."""
    weights = [p for p in params if p.dim() > 1]
    others = [p for p in params if p.dim() <= 1]
    optimizer.add_param_group({"params": weights, "weight_decay": decay, "param_group": "weight"})
    optimizer.add_param_group({"params": others, "weight_decay": 0.0, "param_group": "bias"})


LOGGER = logging.getLogger(__name__)


class KDTrainer(DetectorTrainer):
    """Distil a frozen teacher into the student while it trains.

    Args:
        model: the student.
        teacher: the frozen teacher.
        composite: the KD objective for this pair (holds the adapters).
        overrides, threads, resume_state, data: as for :class:`DetectorTrainer`.
        on_nonfinite: ``stop`` (raise, naming the term, epoch and batch) or ``skip`` (drop that optimizer step,
            warn, count; stop after :data:`~detkd.engine.criterion.MAX_CONSECUTIVE_SKIPS` in a row).
        digests: the content key of each training image (its user's file), for a teacher from a cache.
    """

    def __init__(
        self,
        model: nn.Module,
        teacher: Teacher,
        composite: KDComposite,
        overrides: dict[str, Any],
        threads: int | None = None,
        resume_state: Mapping[str, Any] | None = None,
        on_nonfinite: str = "stop",
        *,
        data: DataSpec | None = None,
        digests: Mapping[str, str] | None = None,
        peers: Sequence[Peer] = (),
    ) -> None:
        self.teacher = teacher
        self.composite = composite
        self.peers = list(peers)
        self.on_nonfinite = on_nonfinite
        self.criterion: KDCriterion | None = None
        self.digests = dict(digests or {})
        super().__init__(model, overrides, threads, resume_state, data=data)

    def setup_model(self) -> None:
        super().setup_model()
        self.teacher.to(self.device)
        self.composite.to(self.device)
        for p in self.peers:
            p.to(self.device)
            p.ema = ModelEMA(p.model)  # before a resume restores it
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
        for peer in self.peers:  # mutual learning: every peer learns with the student, in the same groups' kinds
            params = list(peer.model.parameters())
            _add_groups(optimizer, params, decay)
            LOGGER.info("peer %s: %d parameters added to the optimizer", peer.name, sum(p.numel() for p in params))
        composites = [self.composite, *(p.composite for p in self.peers)]
        if not self.composite.use_feature:  # adapters and method modules only serve feature imitation
            return optimizer
        params = [p for c in composites for p in c.parameters()]
        _add_groups(optimizer, params, decay)
        LOGGER.info(
            "KD modules (adapters + %s): %d parameters added to the optimizer",
            self.composite.cfg.feature.method,
            sum(p.numel() for p in params),
        )
        return optimizer

    def _setup_train(self) -> None:
        super()._setup_train()  # builds the EMA from the bare student: the teacher never enters a checkpoint
        criterion = self.criterion
        assert criterion is not None  # set by build_criterion
        if self.world_size > 1 and self._resume_state is None:
            distributed.broadcast_parameters(self.composite)  # every rank's adapters start from rank 0's
            for p in self.peers:  # and every rank's peers (and their EMAs from them)
                distributed.broadcast_parameters(p)
                p.ema = ModelEMA(p.model)
        if isinstance(self.teacher, EMATeacher):  # self-distillation: the teacher is the EMA Ultralytics keeps
            self.teacher.bind(lambda: self._ema_model())
        # detkd's own hooks run first: Ultralytics' loggers and the user's callbacks then see the epoch's pooled
        # losses and its KD terms
        self.callbacks["on_train_epoch_start"].insert(
            0, lambda t: criterion.start_epoch(t.epoch, t.epochs, len(t.train_loader))
        )
        self.callbacks["on_train_epoch_end"][:0] = [lambda t: t.reduce_epoch_losses(), lambda t: t.log_kd_terms()]

    def preprocess_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Soft boxes out of the labels, Ultralytics' preprocessing (device, scaling, multi-scale), then the
        teacher's forward (or the cache's targets) on the result."""
        if self.cache_teacher is not None:
            batch = split_soft(batch)
        batch = super().preprocess_batch(batch)
        if self.criterion is not None:
            self.criterion.run_teacher(batch)
        return batch

    @property
    def cache_teacher(self) -> CachedTeacher | None:
        return self.teacher if isinstance(self.teacher, CachedTeacher) else None

    def unlabeled_samples(self) -> list[Any]:
        report = self.data_spec.reports.get("unlabeled")
        return list(report.samples) if report is not None else []

    def soft_source(self, samples: list[Any]) -> Any:
        if self.cache_teacher is None:
            return None
        digests = {str(s.train_path): self.digests[str(s.image)] for s in samples}
        return SoftLabelSource(self.cache_teacher.cache, digests)

    def mix_batches(self, loader: Any, batch_size: int) -> None:
        dataset = loader.dataset
        if not getattr(dataset, "unlabeled", None) or self.world_size > 1:
            if getattr(dataset, "unlabeled", None):
                LOGGER.warning("unlabeled images under DDP: each rank's batches mix them at random (not a fixed share)")
            return
        inner = loader.batch_sampler  # Ultralytics' repeat sampler around torch's batch sampler
        seed = int(getattr(epoch_shuffle(loader), "seed", 0) or 0)
        unl = dataset.unlabeled
        labelled = [i for i, f in enumerate(dataset.im_files) if os.path.abspath(f) not in unl]
        unlabeled = [i for i, f in enumerate(dataset.im_files) if os.path.abspath(f) in unl]
        fraction = self.composite.cfg.unlabeled.fraction
        inner.sampler = MixedBatches(labelled, unlabeled, batch_size, fraction, seed)
        LOGGER.info("training batches: %d labelled + %d unlabeled images (kd.unlabeled.fraction %.2f); %d labelled "
                    "and %d unlabeled images in all", inner.sampler.per, inner.sampler.k, fraction, len(labelled),
                    len(unlabeled))  # fmt: skip

    def build_criterion(self) -> KDCriterion:
        student: Any = unwrap_model(self.model)
        unlabeled = frozenset(os.path.abspath(str(s.train_path)) for s in self.unlabeled_samples())
        if self.peers:
            assert isinstance(self.teacher, PeerView)
            student.criterion = self.criterion = MutualCriterion(
                student, self.teacher, self.composite, self.peers, on_nonfinite=self.on_nonfinite
            )
            return self.criterion
        student.criterion = self.criterion = KDCriterion(
            student, self.teacher, self.composite, on_nonfinite=self.on_nonfinite, unlabeled=unlabeled
        )
        return self.criterion

    def apply_optimizer_step(self) -> None:
        """Drop a step whose loss was non-finite (``skip``); average the adapters' gradients over ranks (DDP)."""
        crit = self.criterion
        skip = crit is not None and crit.take_skip()
        if self.world_size > 1:
            skip = distributed.any_rank(skip, self.device)  # every rank drops the same step
        optimizer: Any = self.optimizer
        if skip:
            optimizer.zero_grad()
            return
        if self.world_size > 1:
            distributed.average_gradients(self.composite.parameters())
            for p in self.peers:
                distributed.average_gradients(p.parameters())
        if not self.peers:
            super().apply_optimizer_step()
            return
        # Ultralytics' step (unscale, clip at 10, step, zero, EMA), with every peer clipped and averaged alike
        self.scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm=10.0)
        for p in self.peers:
            torch.nn.utils.clip_grad_norm_(p.model.parameters(), max_norm=10.0)
        self.scaler.step(optimizer)
        self.scaler.update()
        optimizer.zero_grad()
        if self.ema:
            self.ema.update(self.model)
        for p in self.peers:
            p.ema.update(p.model)

    def reduce_epoch_losses(self) -> None:
        """Under DDP: log this rank's epoch means of the KD terms, then average every loss item over ranks. An epoch
        whose every step was skipped (``skip`` mode) trained nothing: that stops the run instead of logging zeros."""
        crit = self.criterion
        if crit is not None:
            all_skipped = crit.step > 0 and crit.skipped >= crit.step
            if self.world_size > 1:
                all_skipped = distributed.any_rank(all_skipped, self.device)
            if all_skipped:
                raise NonFiniteLossError(
                    f"epoch {self.epoch + 1}: every step had a non-finite loss and was skipped, so nothing was "
                    "trained (a KD weight of inf, or an lr0 that diverges?); the last saved checkpoint is intact"
                )
        if self.criterion is not None and self.criterion.skipped:
            LOGGER.warning("epoch %d: %d step(s) skipped on non-finite losses", self.epoch + 1, self.criterion.skipped)
            self.criterion.skipped = 0
        if self.world_size <= 1 or not self.tloss:
            return
        local = {k: float(v) for k, v in self.tloss.items()}
        for p in self.peers:  # every rank must hold the same peer (rank 0's start, averaged gradients): checkable
            local[f"peer/{p.name}/param_sum"] = float(sum(t.detach().double().sum() for t in p.model.parameters()))
        r = distributed.rank()
        LOGGER.info("rank %d epoch %d KD terms: %s", r, self.epoch + 1,
                    ", ".join(f"{k}={local[k]:.4g}" for k in KD_ITEM_NAMES if k in local))  # fmt: skip
        self.save_dir.mkdir(parents=True, exist_ok=True)
        with (self.save_dir / f"losses_rank{r}.jsonl").open("a") as fh:
            fh.write(json.dumps({"epoch": self.epoch + 1, **local}) + "\n")
        self.tloss = distributed.mean_over_ranks(self.tloss)

    def log_kd_terms(self) -> None:
        """Append this epoch's mean of every named KD term (weighted and unweighted, per level and branch) to
        ``kd_terms.csv``; under DDP pooled over every rank's steps."""
        if self.criterion is None:
            return
        means = distributed.pooled_means(*self.criterion.epoch_terms())
        counts = {f"data/{k}": float(v) for k, v in self.criterion.take_counts().items()}  # this rank's images
        if counts.get("data/unlabeled_images"):
            LOGGER.info("epoch %d: %d images (%d unlabeled), %d pseudo-labels, %d soft boxes", self.epoch + 1,
                        counts.get("data/images", 0), counts["data/unlabeled_images"],
                        counts.get("data/pseudo_labels", 0), counts.get("data/soft_boxes", 0))  # fmt: skip
        self.kd_terms = {**means, **counts}  # for callbacks (Distiller.add_callback) of this epoch
        if distributed.is_main() and (means or counts):
            write_epoch_row(self.save_dir / KD_TERMS_CSV, self.epoch + 1, self.kd_terms)

    def _ema_model(self) -> nn.Module:
        assert self.ema is not None, "the EMA exists from _setup_train on"
        return self.ema.ema

    def kd_state(self) -> dict[str, Any]:
        balancer = self.composite.balancer
        state: dict[str, Any] = {
            "modules": self.composite.state_dict(),
            "balancer": balancer.state_dict() if balancer is not None else None,
        }
        if self.peers:
            state["peers"] = [
                {"name": p.name, "model": p.model.state_dict(), "ema": p.ema.ema.state_dict(),
                 "updates": int(p.ema.updates), "modules": p.composite.state_dict()}
                for p in self.peers
            ]  # fmt: skip
        return state

    def _restore(self, state: Mapping[str, Any]) -> None:
        kd = state.get("kd") or {}
        if not isinstance(kd, Mapping) or "modules" not in kd:
            raise DetkdError("resume: the saved state has no KD adapters (it comes from a run without KD)")
        self.composite.load_state_dict(kd["modules"])
        if self.composite.balancer is not None and kd.get("balancer"):
            self.composite.balancer.load_state_dict(kd["balancer"])
        saved = kd.get("peers") or []
        if len(saved) != len(self.peers) or any(
            s.get("name") != p.name for s, p in zip(saved, self.peers, strict=True)
        ):
            raise DetkdError(f"resume: the saved state has peers {[s.get('name') for s in saved]}, this run "
                             f"{[p.name for p in self.peers]}")  # fmt: skip
        for s, p in zip(saved, self.peers, strict=True):
            p.model.load_state_dict(s["model"])
            p.ema.ema.load_state_dict(s["ema"])
            p.ema.updates = int(s["updates"])
            p.composite.load_state_dict(s["modules"])
        super()._restore(state)

    def label_loss_items(self, loss_items: dict | None = None, prefix: str = "train") -> Any:
        """Validation runs the bare student (no teacher), so KD items are logged for training only."""
        items = super().label_loss_items(loss_items, prefix)
        if prefix == "train":
            return items
        kd = tuple(f"{prefix}/{k}" for k in (*KD_ITEM_NAMES, *ratio_item_names(self.composite)))
        if isinstance(items, dict):
            return {k: v for k, v in items.items() if k not in kd}
        return [k for k in items if k not in kd]
