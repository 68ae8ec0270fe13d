"""Padding lists of token ids into tensors: right padding for training, left padding for generation."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def pad(
    sequences: Sequence[Sequence[int]], value: int, side: str = "right", width: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L) ids padded with `value` on `side` to the longest sequence (or to `width`, when wider), and the
    (B, L) attention mask (1 at real tokens)."""
    length = max(max(len(s) for s in sequences), width or 0)
    ids = torch.full((len(sequences), length), value, dtype=torch.long)  # (B, L)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)  # (B, L)
    for row, seq in enumerate(sequences):
        span = slice(0, len(seq)) if side == "right" else slice(length - len(seq), length)
        ids[row, span] = torch.tensor(seq, dtype=torch.long)
        mask[row, span] = 1
    return ids, mask
