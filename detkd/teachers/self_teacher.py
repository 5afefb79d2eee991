"""The student's own EMA as its teacher: online self-distillation with no external model (``--teacher self``).

Ultralytics keeps an exponential moving average of the student's weights (the model it validates and saves); it is
smoother and usually better than the raw weights of the step. With ``--teacher self`` that EMA is the teacher of
every step: the same architecture (so every KD family pairs level for level), frozen for the step, updated after
each optimizer step by Ultralytics itself. Nothing else is loaded; resume restores the EMA with the run, so the
resumed run has the teacher the uninterrupted one had.

Early in a run the EMA is close to the student (Ultralytics ramps its decay up over the first updates), so the KD
terms start near zero and grow as the two drift apart. Its default recipe is ``preset:online``: the EMA is no better
than the student, so its logit KD is added to the detection loss (``kd.logit.mode: add``) rather than replacing
part of it, and feature imitation is off.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

from detkd.students import ultralytics_yolo as uy
from detkd.teachers.ultralytics_yolo import UltralyticsTeacher
from detkd.types import TeacherOutputs

SELF_TEACHER = "self"  # --teacher self: the student's own EMA
ONLINE_PRESET = "preset:online"  # its default recipe (and mutual learning's): KD added to the detection loss


@contextlib.contextmanager
def batch_statistics(model: nn.Module) -> Iterator[None]:
    """Run ``model`` with its BatchNorm layers normalising by the batch's statistics, as the training student does,
    without changing their running statistics (momentum 0 for the call), then restore its mode.

    The EMA is kept in eval mode, whose running statistics lag far behind the weights early in a run: its outputs
    then differ from the student's for that reason alone (on the synthetic suite the logit KD term rose to 18x its
    start and the student collapsed, mAP50-95 0.003 vs 0.092). In batch mode a teacher with the student's weights
    gives the student's outputs, and what it teaches is what the averaging of weights adds."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, m.training, None if m.num_batches_tracked is None else m.num_batches_tracked.clone())
             for m in norms]  # fmt: skip
    was_training = model.training
    try:
        model.eval()  # the rest of the model (the head's decoding) as in evaluation
        for m in norms:
            m.momentum = 0.0
            m.train()
        yield
    finally:
        for m, (momentum, training, tracked) in zip(norms, saved, strict=True):
            m.momentum = momentum
            m.train(training)
            if tracked is not None:
                m.num_batches_tracked = tracked  # the counter the train-mode call stepped: the EMA is unchanged
        model.train(was_training)


class EMATeacher(UltralyticsTeacher):
    """A teacher that runs whatever model :meth:`bind` points it to: the trainer's EMA of the student.

    Until bound (before training starts: pairing checks, the run record) it runs a frozen copy of the student as
    built, which has the student's levels, classes and head.
    """

    def __init__(self, student: nn.Module) -> None:
        super().__init__(copy.deepcopy(student), source="self (the student's EMA)")
        self._source_model: Callable[[], nn.Module] | None = None

    def bind(self, source: Callable[[], nn.Module]) -> None:
        """Run ``source()`` from now on (called once per step, so a replaced EMA object is followed)."""
        self._source_model = source

    @torch.no_grad()
    def forward(self, images: Tensor) -> TeacherOutputs:
        model = self._source_model() if self._source_model is not None else self.model
        with batch_statistics(model):
            preds = model(images)
        branches = uy.split_branches(preds)
        head = uy.detect_head(model)
        return TeacherOutputs(
            features=uy.neck_features(preds),
            specs=self.specs,
            heads={name: uy.head_outputs(raw, head) for name, raw in branches.items()},
        )

    def describe(self) -> str:
        return f"self: the student's own EMA ({uy.count_parameters(self.model) / 1e6:.2f} M params, no external model)"
