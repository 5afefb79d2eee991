"""Reproducible randomness: a block seeded without touching the caller's streams, and a shuffle whose whole state
is its pass number (so a resumed run draws what the uninterrupted one drew)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch for what runs inside (model and adapter initialisation) without touching the caller's RNG.

    Models are built before Ultralytics seeds its trainer, so without this their initial weights would depend on
    whatever used the global RNG before. With it, a baseline and a KD student of the same seed start from the same
    weights, and every run of a seed starts from the same weights.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


class EpochShuffle(torch.utils.data.Sampler[int]):
    """A fresh permutation of ``n`` indices for each pass, seeded by ``(seed, pass number)``.

    torch's ``RandomSampler`` draws from one generator lazily (part of a pass's draws happen when the next pass is
    first asked for), so a run restarted between epochs cannot reproduce its sequence; here the pass number is the
    whole state.
    """

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.passes = n, seed, 0

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator()
        g.manual_seed((self.seed * 1_000_003 + self.passes) % (1 << 63))
        self.passes += 1
        yield from torch.randperm(self.n, generator=g).tolist()


def _batch_sampler(loader: Any) -> Any:
    return getattr(getattr(loader, "batch_sampler", None), "sampler", None)  # inside Ultralytics' repeat sampler


def epoch_shuffle(loader: Any) -> EpochShuffle | None:
    sampler = getattr(_batch_sampler(loader), "sampler", None)
    return sampler if isinstance(sampler, EpochShuffle) else None


def use_epoch_shuffle(loader: Any) -> None:
    """Shuffle a training loader with :class:`EpochShuffle` (a distributed sampler is left as it is)."""
    batch_sampler = _batch_sampler(loader)
    sampler = getattr(batch_sampler, "sampler", None)
    if isinstance(sampler, torch.utils.data.RandomSampler) and not sampler.replacement:
        seed = int(sampler.generator.initial_seed()) if sampler.generator is not None else torch.initial_seed()
        batch_sampler.sampler = EpochShuffle(len(sampler), seed)
