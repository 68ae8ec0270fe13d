"""Forward passes over prompt + response batches: the policy's response log-probs, the critic's values.

Layout: `input_ids` (B, P + T) is a left-padded prompt of width P followed by a right-padded response of
width T; the logits at position t predict token t + 1, so the response's log-probs come from the logits at
positions P - 1 .. P + T - 2.
"""

from __future__ import annotations

import inspect
from functools import cache
from typing import Any

import torch

from rlhfkit.core import (
    entropy_from_hidden,
    entropy_from_logits,
    logprobs_from_hidden,
    logprobs_from_logits,
)
from rlhfkit.models.scalar import position_ids, scalar_values


def forward_parameters(model: Any) -> frozenset[str]:
    """The keyword arguments a model's forward takes: those of the Hugging Face model a peft (or DDP)
    wrapper passes its keyword arguments on to. Which to pass (`logits_to_keep`, the cache's name) is read
    from here."""
    model = getattr(model, "module", model)  # DDP's wrapper passes its keyword arguments on to `module`
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return _parameters(type(base))


def no_cache(model: Any) -> dict[str, bool]:
    """`use_cache=False` where the model takes it: a pass that generates nothing must not build a KV cache
    (in eval mode transformers would; under activation checkpointing the backward's recomputation would
    then append to the first pass's cache)."""
    return {"use_cache": False} if "use_cache" in forward_parameters(model) else {}


@cache
def _parameters(model_type: type) -> frozenset[str]:
    return frozenset(inspect.signature(model_type.forward).parameters)


def response_logits(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, context: int) -> Any:
    """(B, T, V) the logits that predict the response tokens. Only the last T + 1 positions go through the
    LM head where the model allows it: the head is a large share of a small model's FLOPs (SmolLM2-135M:
    576 x 49,152 of its 135M parameters), and the prompt's logits are never used."""
    response = input_ids.shape[1] - context
    positions = torch.arange(context - 1, input_ids.shape[1], device=input_ids.device)  # (T + 1,)
    keep = {"logits_to_keep": positions} if "logits_to_keep" in forward_parameters(model) else {}
    keep |= no_cache(model)
    logits = model(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask), **keep
    ).logits  # (B, T + 1, V) or (B, P + T, V)
    return logits[:, -response - 1 : -1]  # (B, T, V), a view


# From this vocabulary on the log-probs would be computed from the head's input by chunks by default (no
# (B, T, V) logits). None for now: the default stays the whole logits until models that scale their logits
# under other names (Granite's `logits_scaling`, ...), DDP-wrapped DPO models and frozen bf16 heads are
# handled (docs/performance.md); `chunked=True` asks for it.
CHUNKED_VOCAB: int | None = None


def head_parts(model: Any) -> tuple[Any, torch.Tensor, torch.Tensor | None] | None:
    """(the model's body, its LM head's weight, bias) when its logits are exactly `body(...)[0] @ W.T + b`: a
    plain linear head (with LoRA on it, peft wraps it: not plain), no logit scaling or soft-capping (under
    the names checked here), weights not sharded (DTensors seen outside the wrapped model's forward); else
    None."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    body = getattr(base, getattr(base, "base_model_prefix", ""), None)
    config = getattr(base, "config", None)
    scaled = any(getattr(config, name, None) for name in ("final_logit_softcapping", "logit_scale"))
    if type(head) is not torch.nn.Linear or body is None or scaled:
        return None
    if any(type(p).__name__ == "DTensor" for p in head.parameters()):
        return None
    return body, head.weight, head.bias


def chunked_head(model: Any, chunked: bool | None) -> tuple[Any, torch.Tensor, torch.Tensor | None] | None:
    """`head_parts` when the log-probs go by chunks of the head's input: asked (`chunked=True`), or by default
    from `CHUNKED_VOCAB` entries on (when set); None for the whole logits."""
    if chunked is False:
        return None
    if chunked is None and CHUNKED_VOCAB is None:
        return None
    parts = head_parts(model)
    if parts is None or (chunked is None and parts[1].shape[0] < CHUNKED_VOCAB):
        return None
    return parts


def response_logprobs(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    context: int,
    temperature: float,
    with_entropy: bool = False,
    chunked: bool | None = None,
    packed: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(B, T) log-probs of the response tokens under `model` at `temperature`; optionally (B, T) entropies.
    `chunked`: from the head's input chunk by chunk (`core.logprobs_from_hidden`: no (B, T, V) logits, equal
    to the whole logits' to float rounding), where the model allows it (`head_parts`); None = from
    `CHUNKED_VOCAB` entries on (off while it is None). `packed`: from one padding-free pass over the real
    tokens (`models.packing`); 0 at the response's padding."""
    responses = input_ids[:, context:]  # (B, T)
    parts = chunked_head(model, chunked)
    if packed:
        from rlhfkit.models.packing import packed_token_logprobs

        scored = torch.zeros_like(input_ids[:, 1:], dtype=torch.bool)  # (B, P + T - 1)
        scored[:, context - 1 :] = attention_mask[:, context:].bool()  # the real response tokens
        logp, entropy = packed_token_logprobs(
            model, input_ids, attention_mask, scored, temperature, with_entropy, parts
        )  # (B, P + T - 1)
        return logp[:, context - 1 :], None if entropy is None else entropy[:, context - 1 :]  # (B, T)
    if parts is not None:
        body, weight, bias = parts
        hidden = body(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids(attention_mask),
            use_cache=False,  # nothing is generated: no KV cache to build
        )[0][:, context - 1 : -1]  # (B, T, H) the states that predict the response tokens
        entropy = entropy_from_hidden(hidden, weight, temperature, bias) if with_entropy else None  # (B, T)
        return logprobs_from_hidden(hidden, weight, responses, temperature, bias), entropy
    logits = response_logits(model, input_ids, attention_mask, context)  # (B, T, V)
    entropy = entropy_from_logits(logits, temperature) if with_entropy else None  # (B, T)
    return logprobs_from_logits(logits, responses, temperature), entropy


def response_values(
    critic: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, context: int, packed: bool = False
) -> torch.Tensor:
    """(B, T) critic values V(s_t) of the states before each response token: the head read at positions
    P - 1 .. P + T - 2 (the state after the last token is terminal; GAE bootstraps 0 there). `packed`: from
    one padding-free pass."""
    return scalar_values(critic, input_ids, attention_mask, packed)[:, context - 1 : -1]  # (B, T)
