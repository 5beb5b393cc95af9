"""Test double of modules.rng for these tests; per-image CPU generators, no seed resize or GPU sources."""

from __future__ import annotations

import torch


def randn(seed: int, shape: tuple[int, ...], generator: torch.Generator | None = None) -> torch.Tensor:
    """A float32 normal tensor fixed by `seed` alone."""
    gen = torch.Generator().manual_seed(int(seed))
    return torch.randn(tuple(shape), generator=gen)


def randn_local(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    return randn(seed, shape)


def randn_like(x: torch.Tensor) -> torch.Tensor:
    return torch.randn(x.shape, dtype=x.dtype)


class ImageRNG:
    """One noise stream per image: `first()`/`next()` give a [B, *shape] batch, image i drawn from its own
    seed, so an image's noise does not depend on the batch it is in."""

    def __init__(self, shape, seeds, subseeds=None, subseed_strength=0.0, seed_resize_from_h=0,
                 seed_resize_from_w=0) -> None:
        self.shape = tuple(shape)
        self.seeds = list(seeds)
        self.subseeds = list(subseeds or [])
        self.subseed_strength = float(subseed_strength or 0.0)
        self.streams = [torch.Generator().manual_seed(int(s)) for s in self.seeds]
        self._fresh = True

    def first(self) -> torch.Tensor:
        rows = []
        for index, gen in enumerate(self.streams):
            noise = torch.randn(self.shape, generator=gen)
            if self.subseed_strength and index < len(self.subseeds):
                other = randn(self.subseeds[index], self.shape)
                noise = torch.lerp(noise, other, self.subseed_strength)
            rows.append(noise)
        return torch.stack(rows)

    def next(self) -> torch.Tensor:
        if self._fresh:
            self._fresh = False
            return self.first()
        return torch.stack([torch.randn(self.shape, generator=gen) for gen in self.streams])
