"""The seeds of a run's random draws. Each draw is seeded from `--seed` and the step (or epoch) alone, so a resumed
run draws what an uninterrupted one would, whatever the number of processes.

A draw belongs to a stream: seed * multiplier + index * stride. The streams' numbers are those the training
scripts have always used, so that a run trains on the same draws as before.
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class SeedStream:
    """One family of per-step seeds: seed * `multiplier` + index * `stride`."""

    multiplier: int
    stride: int


EPOCH_ORDER = SeedStream(1_000_003, 1)  # the sample order of each epoch (the index is the epoch)
PHRASINGS = SeedStream(1_000_003, 64)  # which phrasing of each caption a step trains on
NOISE = SeedStream(7_919, 64)  # a diffusion step's conditioning dropout, noise and timesteps
AUGMENTATION = SeedStream(7_919, 1)  # the autoencoder's posterior samples, the judge's degraded renders


def step_seed(seed: int, index: int, stream: SeedStream) -> int:
    """The seed of `stream`'s draws at step (or epoch) `index` of a run seeded with `seed`."""
    return seed * stream.multiplier + index * stream.stride


def step_generator(seed: int, step: int, stream: SeedStream, device=None):
    """A generator (on `device`, the CPU by default) seeded for `stream`'s draws at `step`."""
    import torch

    return torch.Generator(device or "cpu").manual_seed(step_seed(seed, step, stream))
