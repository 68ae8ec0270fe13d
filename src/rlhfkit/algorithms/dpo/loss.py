"""What offline and online DPO share: the log-probability of a response in a full sequence, and the DPO
loss of a batch of pairs with the metrics under TRL's names."""

from __future__ import annotations

from typing import Any

import torch

from rlhfkit.config.dpo import DPOConfig
from rlhfkit.core import dpo_loss, logprobs_from_hidden, logprobs_from_logits
from rlhfkit.data import pad
from rlhfkit.models.forward import chunked_head
from rlhfkit.models.packing import packed_token_logprobs

# metrics of a batch of pairs, each a mean over its pairs (TRL's names, so dashboards carry over)
PAIR_METRICS = (
    "loss",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
    "nll_loss",
)
AVERAGED = ("ipo", "simpo")  # the forms whose papers use length-averaged log-probs


def response_logprobs_sum(
    model: Any,
    sequences: list[list[int]],
    starts: list[int],
    pad_id: int,
    device: torch.device,
    packed: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,) summed log-probs of each sequence's tokens from index `starts[i]` on (its response, up to and
    including its end token) under `model`, at temperature 1, and (N,) how many tokens that is. `packed`:
    from one padding-free pass (`models.packing`), the response positions alone through the head."""
    ids, mask = (t.to(device) for t in pad(sequences, pad_id))  # (N, L), (N, L)
    positions = torch.arange(ids.shape[1] - 1, device=device)  # (L-1,)
    # (N,) the position whose logits predict the first response token
    first = torch.tensor(starts, device=device) - 1  # (N,)
    valid = mask[:, 1:].bool() & (positions[None, :] >= first[:, None])  # (N, L-1)
    # no KV cache: nothing is generated (in eval mode transformers would build and fill one)
    head = chunked_head(model, None)  # a large vocabulary: from the head's input by chunks, no (N, L, V)
    if packed:
        logp, _ = packed_token_logprobs(model, ids, mask, valid, head=head)  # (N, L-1), 0 elsewhere
    elif head is not None:
        body, weight, bias = head
        hidden = body(input_ids=ids, attention_mask=mask, use_cache=False)[0][:, :-1]  # (N, L-1, H)
        logp = logprobs_from_hidden(hidden, weight, ids[:, 1:], 1.0, bias)  # (N, L-1)
    else:
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1]  # (N, L-1, V)
        logp = logprobs_from_logits(logits, ids[:, 1:])  # (N, L-1)
    return (logp * valid).sum(1), valid.sum(1)  # (N,), (N,)


def pair_loss(
    policy: tuple[torch.Tensor, torch.Tensor],
    reference: tuple[torch.Tensor, torch.Tensor] | None,
    counts: tuple[torch.Tensor, torch.Tensor],
    config: DPOConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean loss of P pairs and the (len(PAIR_METRICS),) sums of their metrics. `policy`, `reference`:
    (P,) summed log-probs of the chosen and the rejected responses (reference None for simpo); `counts`: (P,)
    their lengths in tokens. IPO and SimPO compare length-averaged log-probs; the others, sums."""
    scale = [c.to(policy[0].dtype) if config.loss_type in AVERAGED else 1.0 for c in counts]
    chosen, rejected = policy[0] / scale[0], policy[1] / scale[1]  # (P,), (P,)
    ref = (None, None) if reference is None else (reference[0] / scale[0], reference[1] / scale[1])
    losses, chosen_rewards, rejected_rewards = dpo_loss(
        chosen, rejected, *ref, beta=config.beta, loss_type=config.loss_type,
        label_smoothing=config.label_smoothing, gamma=config.simpo_gamma,
    )  # fmt: skip
    nll = -policy[0] / counts[0]  # (P,) each chosen response's token-mean NLL (RPO)
    per_pair = losses + config.nll_coef * nll  # (P,)
    margins = chosen_rewards - rejected_rewards  # (P,)
    sums = torch.stack(
        [
            per_pair.detach().sum(),
            chosen_rewards.sum(),
            rejected_rewards.sum(),
            (margins > 0).to(margins.dtype).sum(),
            margins.sum(),
            chosen.detach().sum(),
            rejected.detach().sum(),
            nll.detach().sum(),
        ]
    ).double()  # (8,)
    return per_pair.mean(), sums


def named(sums: torch.Tensor, pairs: int, nll: bool, prefix: str = "") -> dict[str, float]:
    """{metric: mean} of the sums of `pair_loss` over `pairs` pairs (`nll_loss` only when the term is on)."""
    means = dict(zip(PAIR_METRICS, (sums / max(pairs, 1)).tolist(), strict=True))
    return {prefix + k: v for k, v in means.items() if nll or k != "nll_loss"}
