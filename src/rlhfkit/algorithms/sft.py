"""Stage 1: supervised fine-tuning. The loss is the token-mean NLL of the completion / assistant tokens."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from rlhfkit.algorithms.supervised import TokenBudget, forward_groups, micro_batches, prepare, token_budget
from rlhfkit.config import SFTConfig
from rlhfkit.core import masked_mean, ptx_loss
from rlhfkit.data import IGNORE, SFTExample, encode_sft, pad
from rlhfkit.models import load_causal_lm
from rlhfkit.models.packing import packed_token_logprobs
from rlhfkit.runtime.distributed import all_sum, world
from rlhfkit.runtime.process import autocast


def collate(examples: list[SFTExample], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded (B, L) input ids, attention mask and labels (IGNORE at prompt and padding)."""
    ids, mask = pad([e.input_ids for e in examples], pad_id)  # (B, L), (B, L)
    labels, _ = pad([e.labels for e in examples], IGNORE)  # (B, L)
    return ids, mask, labels


def completion_nll(
    model: Any, examples: list[SFTExample], pad_id: int, device: torch.device, packed: bool = False
) -> tuple[torch.Tensor, int]:
    """Mean NLL over the completion tokens of `examples` and how many there are. `packed`: from one
    padding-free pass (`models.packing`), the completion positions alone through the LM head."""
    ids, mask, labels = (t.to(device) for t in collate(examples, pad_id))
    targets = labels[:, 1:]  # (B, L-1): logits at t predict token t + 1
    valid = targets != IGNORE  # (B, L-1)
    if packed:  # a completion token's label is its input id, so the next-token log-probs are the NLL's
        logp, _ = packed_token_logprobs(model, ids, mask, valid)  # (B, L-1), 0 outside the completions
        return masked_mean(-logp, valid), int(valid.sum())
    # no KV cache: nothing is generated (under activation checkpointing the recomputation would append to it)
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits  # (B, L, V)
    return ptx_loss(logits[:, :-1], targets, valid), int(valid.sum())


def sequence_length(example: SFTExample) -> list[int]:
    """The one sequence an SFT example puts in a pass (`TokenBudget.sequences`)."""
    return [len(example.input_ids)]


@torch.no_grad()
def held_out_nll(
    model: Any,
    examples: list[SFTExample],
    pad_id: int,
    device: torch.device,
    batch_size: int,
    packed: bool = False,
    budget: TokenBudget | None = None,
) -> float:
    """Token-mean NLL of the held-out completions, `batch_size` examples a pass or under `budget`."""
    model.eval()
    total, count = 0.0, 0
    for part in forward_groups(examples, batch_size, budget):
        loss, n = completion_nll(model, part, pad_id, device, packed)
        total, count = total + loss.item() * n, count + n
    model.train()
    return total / max(count, 1)


def sft(config: SFTConfig) -> Path:
    """Fine-tune `config.model` on `config.data`; returns the output folder (a causal-LM folder)."""
    run = prepare(config, "sft", encode_sft, load_causal_lm)
    model, accelerator, device = run.model, run.accelerator, run.device
    pad_id, held_out = run.tokenizer.pad_token_id, run.held_out
    packed, budget = config.padding_free, token_budget(config, sequence_length)

    def batch_loss(batch: list[SFTExample]) -> dict[str, float]:
        n_tokens = sum(1 for e in batch for t in e.labels[1:] if t != IGNORE)  # of the global batch
        loss_sum = torch.zeros((), dtype=torch.float64)
        for part, counts in micro_batches(batch, config.grad_accum, budget):
            # Weighted by its share of the global batch's tokens: the sum over micro-batches and processes is
            # the token mean of the whole batch, however it is split (times N: DDP averages the gradients).
            with autocast(device, config.bf16):
                loss, n = completion_nll(model, part, pad_id, device, packed)
            accelerator.backward(loss * n / n_tokens * world() * counts)
            loss_sum += loss.item() * n * counts
        return {"loss": all_sum(loss_sum).item() / n_tokens, "tokens": n_tokens}

    def held_out_loss() -> dict[str, float]:
        with autocast(device, config.bf16):
            policy = accelerator.unwrap_model(model)  # no DDP hooks: the main process evaluates alone
            nll = held_out_nll(policy, held_out, pad_id, device, config.batch_size, packed, budget)
            return {"eval/loss": nll}

    run.batch_loss, run.held_out_metrics = batch_loss, (held_out_loss if held_out else None)
    record = run.run("sft")
    final = {k: v for k, v in record.items() if k in ("loss", "eval/loss")}
    run.finish("sft", train_examples=len(run.train), eval_examples=len(held_out), final=final)
    return run.out
