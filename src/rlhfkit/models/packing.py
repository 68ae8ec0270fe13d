"""Padding-free forward passes: the real tokens of a padded (B, L) batch packed into one row, with position
ids that restart at 0 on each sequence, so no FLOP is spent on padding (docs/performance.md, "Padding-free
batches").

Attention cannot cross sequences: with no attention mask, no KV cache and position ids that restart,
transformers builds a block-diagonal causal mask (sdpa, eager, flex) or runs varlen kernels (flash
attention). A model that does not (a state-space layer, an older attention code path) would mix sequences, so
`check_packing` runs two short sequences both ways before a run uses it.

Results come back in the padded layout (zeros at padding), so the code that reads them (losses, GAE, the
metrics) is the padded path's: the same numbers to float rounding, however the sequences were grouped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from rlhfkit.core import entropy_from_hidden, entropy_from_logits, logprobs_from_hidden, logprobs_from_logits


@dataclass(frozen=True)
class Packing:
    """Where the real tokens of a padded (B, L) batch sit in one packed row of N tokens."""

    rows: torch.Tensor  # (N,) each packed token's row in the padded batch
    cols: torch.Tensor  # (N,) and its column
    position_ids: torch.Tensor  # (1, N) its position in its own sequence: 0, 1, ... per row
    shape: tuple[int, int]  # (B, L)

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, ...) -> (1, N, ...): the values at the real tokens, in order."""
        return x[self.rows, self.cols][None]

    def unpack(self, y: torch.Tensor) -> torch.Tensor:
        """(1, N, ...) -> (B, L, ...): each value back at its token, zeros at padding."""
        out = y.new_zeros((*self.shape, *y.shape[2:]))
        out[self.rows, self.cols] = y[0]
        return out

    def locate(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """(K,) packed positions of the real tokens at (rows[k], cols[k]) of the padded batch."""
        where = torch.full(self.shape, -1, dtype=torch.long, device=self.rows.device)  # (B, L)
        where[self.rows, self.cols] = torch.arange(len(self.rows), device=self.rows.device)
        at = where[rows, cols]  # (K,)
        if bool((at < 0).any()):
            raise ValueError("a scored position is padding")
        return at


def packing(attention_mask: torch.Tensor) -> Packing:
    """The packing of a (B, L) attention mask's real tokens (left, right or both paddings). Positions are the
    padded path's (`models.scalar.position_ids`), so absolute-position models (GPT-2) see the same ones."""
    rows, cols = attention_mask.bool().nonzero(as_tuple=True)  # (N,), (N,) row-major: sequences in order
    positions = attention_mask.long().cumsum(-1) - 1  # (B, L)
    return Packing(rows, cols, positions[rows, cols][None], tuple(attention_mask.shape))


def packed_call(model: Any, packed: Packing, input_ids: torch.Tensor, **kwargs: Any) -> Any:
    """`model` on the packed row of `input_ids` (B, L): no attention mask and no KV cache, so transformers
    keeps the sequences apart by their position ids."""
    return model(
        input_ids=packed.pack(input_ids), position_ids=packed.position_ids, use_cache=False, **kwargs
    )


def packed_token_logprobs(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    scored: torch.Tensor,
    temperature: float = 1.0,
    with_entropy: bool = False,
    head: tuple[Any, torch.Tensor, torch.Tensor | None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(B, L - 1) log-probs of each next token where `scored` (B, L - 1) is True (the logits at position t
    score token t + 1; 0 elsewhere), and the entropies there when asked, from one packed pass of `model`.
    Only the scored positions go through the LM head (`logits_to_keep`), or, given `head` (`models.forward.
    head_parts`: body, weight, bias), from the body's states by chunks (no logits tensor at all)."""
    from rlhfkit.models.forward import forward_parameters

    packed = packing(attention_mask)
    rows, cols = scored.nonzero(as_tuple=True)  # (K,), (K,)
    at = packed.locate(rows, cols)  # (K,) packed positions whose logits are needed
    targets = input_ids[rows, cols + 1][None]  # (1, K)
    if head is not None:
        body, weight, bias = head
        hidden = packed_call(body, packed, input_ids)[0][:, at]  # (1, K, H)
        logp = logprobs_from_hidden(hidden, weight, targets, temperature, bias)  # (1, K)
        entropy = entropy_from_hidden(hidden, weight, temperature, bias) if with_entropy else None
    else:
        keep = {"logits_to_keep": at} if "logits_to_keep" in forward_parameters(model) else {}
        logits = packed_call(model, packed, input_ids, **keep).logits  # (1, K, V) or (1, N, V)
        logits = logits if keep else logits[:, at]  # (1, K, V)
        logp = logprobs_from_logits(logits, targets, temperature)  # (1, K)
        entropy = entropy_from_logits(logits, temperature) if with_entropy else None  # (1, K)

    def padded(values: torch.Tensor) -> torch.Tensor:
        out = values.new_zeros(scored.shape)  # (B, L - 1)
        out[rows, cols] = values[0]
        return out

    return padded(logp), None if entropy is None else padded(entropy)


def packed_hidden(backbone: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, L, H) a transformer body's last hidden states from one packed pass, zeros at padding."""
    packed = packing(attention_mask)
    return packed.unpack(packed_call(backbone, packed, input_ids).last_hidden_state)


def budget_groups(lengths: list[int], budget: int, packed: bool) -> list[list[int]]:
    """Consecutive indices of sequences of `lengths` in groups (micro-batches) whose pass computes at most
    `budget` tokens: the sum of the lengths when packed, rows x the longest when padded. A sequence longer
    than the budget is a group of its own. The order is kept, so the grouping depends on the lengths alone."""
    groups: list[list[int]] = []
    current: list[int] = []
    total = longest = 0  # of `current`
    for i, length in enumerate(lengths):
        longest_with = max(longest, length)
        cost = total + length if packed else (len(current) + 1) * longest_with
        if current and cost > budget:
            groups.append(current)
            current, total, longest_with = [], 0, length
        current.append(i)
        total, longest = total + length, longest_with
    return groups + ([current] if current else [])


def check_packing(model: Any, name: str) -> None:
    """Refuse in one line a model that lets packed sequences see each other: the states of a short sequence
    packed after another must be its states alone (to float rounding; a leak moves them by far more). Every
    process calls (a sharded model's forward is collective); the answer is the same everywhere."""
    from rlhfkit.errors import UsageError

    backbone = getattr(model, getattr(model, "base_model_prefix", ""), None)
    vocab = int(getattr(getattr(model, "config", None), "vocab_size", 0) or 0)
    if backbone is None or vocab < 8:
        raise UsageError(f"padding_free: {name} has no transformer body to pack sequences for")
    device = next(model.parameters()).device
    first = torch.tensor([[3, 5, 7, 2, 6]], device=device) % vocab  # (1, 5)
    second = torch.tensor([[4, 1, 6]], device=device) % vocab  # (1, 3)
    ids = torch.cat([first, second], dim=1)  # (1, 8)
    positions = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2]], device=device)
    with torch.no_grad():
        alone = backbone(input_ids=second, use_cache=False).last_hidden_state[0].float()  # (3, H)
        together = backbone(input_ids=ids, position_ids=positions, use_cache=False).last_hidden_state
    together = together[0, 5:].float()  # (3, H)
    scale = alone.abs().max().clamp(min=1e-6)
    if not bool(((together - alone).abs().max() / scale) < 2e-2):
        raise UsageError(
            f"padding_free: {name} ({type(model).__name__}) lets packed sequences attend to each other "
            "(its attention does not follow position ids); set padding_free=false"
        )
