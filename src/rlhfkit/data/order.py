"""The order examples and prompts are visited in: a pure function of (seed, step), so a resumed run sees
exactly the batches an uninterrupted one would, without replaying the ones before."""

from __future__ import annotations

import math

import torch


def batch_indices(
    n_items: int, batch_size: int, seed: int, index: int, drop_last: bool
) -> tuple[int, list[int]]:
    """(epoch, item indices) of batch `index` (0-based) of a run that reshuffles the `n_items` every epoch
    with a generator seeded `seed + epoch`. With `drop_last` an epoch has floor(n / batch) full batches;
    without, ceil(n / batch) and its last may be smaller."""
    per_epoch = n_items // batch_size if drop_last else math.ceil(n_items / batch_size)
    epoch, k = divmod(index, per_epoch)
    order = torch.randperm(n_items, generator=torch.Generator().manual_seed(seed + epoch))  # (n,)
    return epoch, order[k * batch_size : (k + 1) * batch_size].tolist()
