"""Value checks of the recipe's fields: each bad value is a :class:`~detkd.errors.ConfigError` naming its key."""

from __future__ import annotations

from detkd.errors import ConfigError


def check_range(section: str, name: str, value: float, lo: float, hi: float | None = None) -> None:
    if value < lo or (hi is not None and value > hi):
        bound = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ConfigError(f"{section}.{name}: {value} must be {bound}")


def check_positive(section: str, name: str, value: float) -> None:
    if value <= 0:
        raise ConfigError(f"{section}.{name}: {value} must be > 0")


def check_choice(section: str, name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{section}.{name}: '{value}' is not one of {', '.join(choices)}")
