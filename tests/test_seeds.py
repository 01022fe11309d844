"""The per-step seeds of training: every script draws from `genvl.training.seeds`, and the streams keep the
numbers earlier runs drew, so a checkpoint written before resumes onto the same draws."""

import torch

from genvl.training.data import epoch_order, pick_phrasings
from genvl.training.seeds import AUGMENTATION, EPOCH_ORDER, NOISE, PHRASINGS, step_generator, step_seed


def test_streams_keep_the_seeds_runs_have_always_drawn():
    seed, step = 3, 11
    assert step_seed(seed, step, NOISE) == seed * 7_919 + step * 64  # prior and decoder: dropout, noise, timesteps
    assert step_seed(seed, step, AUGMENTATION) == seed * 7_919 + step  # autoencoder and judge
    assert step_seed(seed, step, PHRASINGS) == seed * 1_000_003 + step * 64
    assert step_seed(seed, step, EPOCH_ORDER) == seed * 1_000_003 + step
    draws = torch.rand(4, generator=step_generator(seed, step, NOISE))
    assert torch.equal(draws, torch.rand(4, generator=torch.Generator().manual_seed(seed * 7_919 + step * 64)))


def test_the_order_and_phrasings_come_from_their_streams():
    order = torch.randperm(10, generator=torch.Generator().manual_seed(2 * 1_000_003 + 5))
    assert torch.equal(epoch_order(10, seed=2, epoch=5), order)
    index = torch.arange(12).view(4, 3)
    batch = torch.tensor([0, 2, 3])
    choice = torch.randint(0, 3, (3,), generator=torch.Generator().manual_seed(2 * 1_000_003 + 5 * 64))
    assert torch.equal(pick_phrasings(index, batch, seed=2, step=5), index[batch, choice])
    # two processes of a global batch of 6 each take their rows of one draw
    both = torch.randint(0, 3, (6,), generator=torch.Generator().manual_seed(2 * 1_000_003 + 5 * 64))
    assert torch.equal(pick_phrasings(index, batch, 2, 5, process_index=1, num_processes=2), index[batch, both[3:]])
