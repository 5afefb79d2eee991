"""Teacher-to-student class maps: subset, rename and merge teacher classes for logit KD.

A map is a YAML mapping from teacher classes to student classes, each given by name or index::

    map:              # teacher class -> student class
      person: Person
      car: Car
      bus: OtherVehicle     # several teacher classes may merge into one student class
      truck: OtherVehicle

Teacher classes left out are ignored (their scores never reach the student); a student class that no teacher class
maps to gets no logit KD. A merged student class takes the highest of its teacher classes' scores (the most
confident explanation; for sigmoid heads this is the max of the logits). Unknown names are errors that list the
valid ones.
"""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from detkd._io import read_yaml
from detkd.errors import ConfigError, PairingError

LOGGER = logging.getLogger(__name__)
UNMAPPED_LOGIT = -30.0  # sigmoid(-30) ~ 1e-13: an unmapped student class looks absent to confidence masks


@dataclass(frozen=True)
class ClassMap:
    """Which teacher classes feed each student class.

    Attributes:
        teacher_names / student_names: class names by index.
        sources: for each student class (by index), the teacher class indices merged into it (may be empty).
    """

    teacher_names: dict[int, str]
    student_names: dict[int, str]
    sources: tuple[tuple[int, ...], ...]

    @property
    def mapped(self) -> list[bool]:
        """Per student class: whether any teacher class feeds it."""
        return [bool(s) for s in self.sources]

    def apply(self, teacher_logits: Tensor, fill: float = UNMAPPED_LOGIT) -> Tensor:
        """Teacher class logits (B, Ct, A) as student class logits (B, Cs, A); an unmapped student class gets
        ``fill`` (pass 0 for probabilities: the max of probabilities is the max of logits, mapped the same way).

        >>> cm = ClassMap({0: "a", 1: "b", 2: "c"}, {0: "x", 1: "y"}, ((0, 2), ()))
        >>> cm.apply(torch.tensor([[[1.0], [5.0], [3.0]]]))[0, :, 0].tolist()
        [3.0, -30.0]
        """
        if teacher_logits.shape[1] != len(self.teacher_names):
            raise ValueError(
                f"class map expects {len(self.teacher_names)} teacher classes, got {teacher_logits.shape[1]}"
            )
        b, _, a = teacher_logits.shape
        out = teacher_logits.new_full((b, len(self.sources), a), fill)
        for s, src in enumerate(self.sources):
            if src:
                out[:, s] = teacher_logits[:, list(src)].amax(dim=1)
        return out

    def class_mask(self, like: Tensor) -> Tensor:
        """(Cs,) 1 for student classes that receive logit KD, else 0."""
        return torch.tensor(self.mapped, dtype=like.dtype, device=like.device)

    def describe(self) -> str:
        parts = []
        for s, src in enumerate(self.sources):
            names = " + ".join(self.teacher_names[t] for t in src) or "(no teacher class: no logit KD)"
            parts.append(f"{self.student_names[s]} <- {names}")
        return "; ".join(parts)


def _resolve(key: Any, names: dict[int, str], side: str, where: str) -> int:
    if isinstance(key, bool):
        raise ConfigError(f"{where}: {key!r} is not a {side} class")
    if isinstance(key, int):
        if key in names:
            return key
        raise ConfigError(f"{where}: {side} class index {key} out of range (0..{len(names) - 1})")
    text = str(key)
    exact = [i for i, n in names.items() if n == text]
    if exact:
        return exact[0]
    folded = [i for i, n in names.items() if n.lower() == text.lower()]
    if len(folded) == 1:
        return folded[0]
    close = difflib.get_close_matches(text, list(names.values()), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    valid = ", ".join(names.values())
    raise ConfigError(f"{where}: unknown {side} class '{text}'{hint}; valid {side} classes: {valid}")


def class_map_from_dict(
    data: Any, teacher_names: dict[int, str], student_names: dict[int, str], where: str = "class map"
) -> ClassMap:
    """Build a map from ``{teacher class: student class}`` (a top-level ``map:`` key is optional)."""
    if isinstance(data, dict) and set(data) == {"map"}:
        data = data["map"]
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"{where}: expected a mapping 'teacher class: student class' (optionally under 'map:')")
    sources: list[list[int]] = [[] for _ in student_names]
    for t_key, s_key in data.items():
        t = _resolve(t_key, teacher_names, "teacher", where)
        s = _resolve(s_key, student_names, "student", where)
        if t not in sources[s]:
            sources[s].append(t)
    if not any(sources):
        raise ConfigError(f"{where}: maps no teacher class to a student class")
    return ClassMap(dict(teacher_names), dict(student_names), tuple(tuple(sorted(s)) for s in sources))


def load_class_map(path: str | Path, teacher_names: dict[int, str], student_names: dict[int, str]) -> ClassMap:
    """Load a class-map YAML; errors name the file."""
    data = read_yaml(path, "class map")
    return class_map_from_dict(data, teacher_names, student_names, where=str(path))


def map_by_name(teacher_names: dict[int, str], student_names: dict[int, str]) -> ClassMap | None:
    """The identity map by name when every student class is also a teacher class (else None).

    >>> map_by_name({0: "cat", 1: "dog"}, {0: "dog"}).sources
    ((1,),)
    """
    index = {n: i for i, n in teacher_names.items()}
    if not all(n in index for n in student_names.values()):
        return None
    return ClassMap(dict(teacher_names), dict(student_names), tuple((index[n],) for n in student_names.values()))


def resolve_class_map(
    model_names: dict[int, str],
    data_names: dict[int, str],
    class_map: str | Path | None = None,
    *,
    source: str | Path = "the model",
    required: bool = True,
    alternative: str = "",
) -> ClassMap | None:
    """How a model's classes (a teacher's, or a model being scored) become the data's.

    ``class_map`` when given; None when the classes are the data's; by name when the model has every data class;
    otherwise a :class:`PairingError` asking for a map (``alternative`` is appended to its advice), or None when not
    ``required``.
    """
    if class_map is not None:
        cmap = load_class_map(class_map, model_names, data_names)
        LOGGER.info("class map %s: %s", class_map, cmap.describe())
        return cmap
    if model_names == data_names:
        return None
    by_name = map_by_name(model_names, data_names)
    if by_name is not None:
        LOGGER.info("%s: classes mapped to the data's by name: %s", source, by_name.describe())
        return by_name
    if not required:
        return None
    shown = ", ".join(list(model_names.values())[:12]) + (" ..." if len(model_names) > 12 else "")
    raise PairingError(
        f"{source}: its classes ({shown}) are not the data's ({', '.join(data_names.values())}); give a class map "
        f"(--class-map map.yaml, e.g. datasets/class_maps/coco80_to_hituav.yaml){alternative}"
    )
