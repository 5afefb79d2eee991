"""Offline and label-free distillation: the teacher cache (:mod:`~detkd.offline.cache`, built by
:mod:`~detkd.offline.build`), its soft boxes per training image (:mod:`~detkd.offline.source`, carried through
augmentation by :mod:`~detkd.data.soft_labels`), the cache as a teacher (:mod:`~detkd.offline.teacher`, targets by
:mod:`~detkd.teachers.soft`) and unlabeled images (:mod:`~detkd.offline.unlabeled`)."""

from detkd.offline.build import BuildResult, build_cache, cache_teacher
from detkd.offline.cache import TeacherCache

__all__ = ["BuildResult", "TeacherCache", "build_cache", "cache_teacher"]
