"""Progress bars for detkd's long loops (teacher cache, evaluation, export, benchmark jobs).

A bar is drawn on stderr only when stderr is a terminal (tqdm's ``disable=None``), so logs and CI output stay
clean; a disabled bar costs nothing. Training keeps Ultralytics' own bars.
"""

from __future__ import annotations

from typing import Any, Protocol


class Bar(Protocol):
    def update(self, n: int = 1) -> Any: ...

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> Any: ...

    def close(self) -> Any: ...


class _Silent:
    def update(self, n: int = 1) -> None:
        return None

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        return None

    def close(self) -> None:
        return None


def progress_bar(total: int, desc: str, *, unit: str = "img", enabled: bool = True) -> Bar:
    """A tqdm bar of ``total`` steps (rate and ETA), or a silent one when ``enabled`` is false."""
    if not enabled:
        return _Silent()
    from tqdm import tqdm

    bar: Bar = tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, disable=None, leave=False)
    return bar
