"""The files a teacher spec reads (fingerprinted in a run's record, so a resume can tell a replaced teacher)."""

from __future__ import annotations

from pathlib import Path


def input_files(teacher: str | Path, class_map: str | Path | None = None) -> list[Path]:
    """Every file a teacher spec reads: the teacher file (or torchvision weights), an ensemble's members and class
    maps (recursively), and the class map."""
    from detkd.teachers.ensemble import is_ensemble, member_specs
    from detkd.teachers.torchvision_det import PREFIX, parse_spec

    text = str(teacher)
    files: list[Path] = []
    if text.startswith(PREFIX):
        weights = parse_spec(text)[1]
        files += [weights] if weights is not None else []
    elif Path(text).is_file():
        files.append(Path(text))
        if is_ensemble(text):
            for m in member_specs(text):
                files += input_files(m.teacher, m.class_map)
    if class_map:
        files.append(Path(class_map))
    return files
