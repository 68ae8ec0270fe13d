"""Stage 2: a reward model — the backbone with a scalar `score` head — trained with the pairwise loss."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from rlhfkit.algorithms.supervised import TokenBudget, forward_groups, micro_batches, prepare, token_budget
from rlhfkit.config import RewardConfig
from rlhfkit.core import pairwise_loss
from rlhfkit.data import PairExample, encode_pairs, pad
from rlhfkit.models import load_scalar_model
from rlhfkit.models.scalar import SequenceScores
from rlhfkit.runtime.distributed import all_sum, world
from rlhfkit.runtime.process import autocast


def score_sequences(
    model: Any, sequences: list[list[int]], pad_id: int, device: torch.device, packed: bool = False
) -> torch.Tensor:
    """(N,) reward of each token sequence, read at its last token by `model`, a `SequenceScores`;
    `packed`: from one padding-free pass."""
    ids, mask = pad(sequences, pad_id)  # (N, L), (N, L)
    return model(ids.to(device), mask.to(device), packed)  # (N,)


def pair_lengths(pair: PairExample) -> list[int]:
    """The two sequences a pair puts in a pass (`TokenBudget.sequences`)."""
    return [len(pair.chosen), len(pair.rejected)]


def sequence_length(sequence: list[int]) -> list[int]:
    """A single sequence in a pass (`reward_stats`'s budget)."""
    return [len(sequence)]


def pair_loss(
    model: Any, pairs: list[PairExample], pad_id: int, device: torch.device, packed: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, accuracy, chosen - rejected) of a batch of pairs, chosen and rejected scored in one pass."""
    sequences = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    scores = score_sequences(model, sequences, pad_id, device, packed)  # (2P,)
    chosen, rejected = scores[: len(pairs)], scores[len(pairs) :]  # (P,), (P,)
    margin = None
    if pairs[0].margin is not None:
        margin = torch.tensor([p.margin for p in pairs], dtype=scores.dtype, device=device)  # (P,)
    loss, accuracy = pairwise_loss(chosen, rejected, margin)
    return loss, accuracy, (chosen - rejected).detach()


@torch.no_grad()
def held_out_accuracy(
    model: Any,
    pairs: list[PairExample],
    pad_id: int,
    device: torch.device,
    batch_size: int,
    packed: bool = False,
    budget: TokenBudget | None = None,
) -> dict[str, float]:
    """Held-out accuracy (chosen scored above rejected) and mean score margin; `batch_size` pairs a pass or
    under `budget`."""
    model.eval()
    margins = torch.cat(
        [
            pair_loss(model, part, pad_id, device, packed)[2]
            for part in forward_groups(pairs, batch_size, budget)
        ]
    )  # (N,)
    model.train()
    return {"eval/accuracy": (margins > 0).float().mean().item(), "eval/margin": margins.mean().item()}


@torch.no_grad()
def reward_stats(
    model: Any,
    pairs: list[PairExample],
    pad_id: int,
    device: torch.device,
    batch_size: int,
    seed: int,
    samples: int,
    packed: bool = False,
    budget: TokenBudget | None = None,
) -> dict[str, float]:
    """Mean and std of the scores of up to `samples` chosen responses (PPO normalises by them);
    `batch_size` responses a pass, or under `budget` (of single sequences)."""
    model.eval()
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(seed))[:samples].tolist()
    chosen = [pairs[i].chosen for i in order]
    scores = torch.cat(
        [
            score_sequences(model, part, pad_id, device, packed)
            for part in forward_groups(chosen, batch_size, budget)
        ]
    )  # (N,)
    std = scores.std().item() if len(scores) > 1 else 1.0
    return {"mean": scores.mean().item(), "std": std, "samples": len(scores)}


def train_reward_model(config: RewardConfig) -> Path:
    """Train a reward model on `config.data`; returns the output folder (a sequence-classification folder
    whose rlhfkit.json holds `reward_stats`)."""
    run = prepare(config, "preference", encode_pairs, load_scalar_model, wrap=SequenceScores)
    model, accelerator, device = run.model, run.accelerator, run.device
    pad_id, held_out = run.tokenizer.pad_token_id, run.held_out
    packed, budget = config.padding_free, token_budget(config, pair_lengths)

    def batch_loss(batch: list[PairExample]) -> dict[str, float]:
        totals = torch.zeros(3)  # loss, accuracy, margin, summed over pairs
        for part, counts in micro_batches(batch, config.grad_accum, budget):
            # Each micro-batch weighted by its share of the global batch's pairs: the mean over the batch
            # (times N: DDP averages the gradients).
            with autocast(device, config.bf16):
                loss, accuracy, margins = pair_loss(model, part, pad_id, device, packed)
            accelerator.backward(loss * len(part) / len(batch) * world() * counts)
            totals += torch.tensor([loss.item(), accuracy.item(), margins.mean().item()]) * len(part) * counts
        loss, accuracy, margin = (all_sum(totals) / len(batch)).tolist()
        return {"loss": loss, "accuracy": accuracy, "margin": margin}

    def held_out_metrics() -> dict[str, float]:
        with autocast(device, config.bf16):
            scorer = accelerator.unwrap_model(model)  # no DDP hooks: the main process evaluates alone
            return held_out_accuracy(scorer, held_out, pad_id, device, config.batch_size, packed, budget)

    run.batch_loss, run.held_out_metrics = batch_loss, (held_out_metrics if held_out else None)
    record = run.run("rm")
    with run.whole_parameters():  # every process scores the same examples
        stats = reward_stats(
            accelerator.unwrap_model(model),
            run.train,
            pad_id,
            device,
            config.batch_size,
            config.seed,
            config.stats_samples,
            packed,
            token_budget(config, sequence_length),
        )
    final = {k: v for k, v in record.items() if k in ("loss", "accuracy", "eval/accuracy", "eval/margin")}
    run.finish("rm", train_pairs=len(run.train), eval_pairs=len(held_out), reward_stats=stats, final=final)
    return run.out
