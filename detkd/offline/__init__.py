"""Offline and label-free distillation: a teacher cache (:mod:`~detkd.offline.cache`, built by
:mod:`~detkd.offline.build`), soft boxes that travel through augmentation (:mod:`~detkd.offline.dataset`,
:mod:`~detkd.offline.soft`, :mod:`~detkd.offline.teacher`) and unlabeled images (:mod:`~detkd.offline.unlabeled`)."""

from detkd.offline.build import BuildResult, build_cache, cache_teacher
from detkd.offline.cache import TeacherCache

__all__ = ["BuildResult", "TeacherCache", "build_cache", "cache_teacher"]
