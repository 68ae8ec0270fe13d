"""Offline DPO: the policy trained on preference pairs against the reference's log-probs of the same pairs,
computed once before training (one no-grad pass, kept with the run's checkpoints), so the reference is never
held in memory while the policy trains."""

from __future__ import annotations

import hashlib
import math
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rlhfkit.algorithms.dpo.loss import PAIR_METRICS, named, pair_loss, response_logprobs_sum
from rlhfkit.algorithms.dpo.sampling import HeldOutSampler, ReferenceLogprobs
from rlhfkit.algorithms.supervised import (
    Supervised,
    TokenBudget,
    forward_groups,
    micro_batches,
    prepare,
    token_budget,
)
from rlhfkit.config.dpo import DPOConfig
from rlhfkit.data import PairExample, encode_pairs
from rlhfkit.errors import UsageError
from rlhfkit.models import load_causal_lm, load_tokenizer
from rlhfkit.models.forward import response_logprobs
from rlhfkit.models.packing import check_packing
from rlhfkit.runtime.distributed import all_sum, is_main, rank, world
from rlhfkit.runtime.metrics import progress
from rlhfkit.runtime.outputs import CHECKPOINTS
from rlhfkit.runtime.process import autocast, quiet_transformers
from rlhfkit.tasks.scorers import ModelScorer, load_monitors

CACHE = "reference_logps.pt"  # under OUT/checkpoints: a resumed run reads it, a finished run drops it


@dataclass(frozen=True)
class ReferencedPair:
    """A pair with the reference's summed log-probs of its chosen and rejected responses (None: simpo)."""

    pair: PairExample
    reference: tuple[float, float] | None


def pair_lengths(pair: PairExample | ReferencedPair) -> list[int]:
    """The two sequences a pair puts in a pass, its chosen and its rejected (`TokenBudget.sequences`)."""
    pair = pair.pair if isinstance(pair, ReferencedPair) else pair
    return [len(pair.chosen), len(pair.rejected)]


def check_reference(config: DPOConfig) -> None:
    """A UsageError, before anything is written, for a reference whose tokens are not the policy's, or
    (`padding_free`) that lets packed sequences see each other."""
    if config.reference is None or config.reference == config.model:
        return
    tokenizer = load_tokenizer(config.reference)
    if tokenizer.get_vocab() != load_tokenizer(config.model).get_vocab():
        raise UsageError(
            f"reference {config.reference} has another tokenizer than {config.model}: DPO compares "
            "the log-probs of the same tokens"
        )
    if config.padding_free:  # its one pass before training is packed too
        quiet_transformers()  # no loading bars around the one line
        # loaded for the check alone, in the frozen weights' dtype, and freed at once
        reference = load_causal_lm(config.reference, tokenizer, getattr(torch, config.model_dtype))
        check_packing(reference, config.reference)
        del reference


def part_loss(
    model: Any, part: list[ReferencedPair], pad_id: int, device: torch.device, config: DPOConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean loss and metric sums of `part` (`pair_loss`), chosen and rejected in one forward pass."""
    pairs, n = [p.pair for p in part], len(part)
    sequences = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    sums, counts = response_logprobs_sum(
        model, sequences, [p.prompt_length for p in pairs] * 2, pad_id, device, config.padding_free
    )
    sums = sums.float()  # (2n,) log-probs stay fp32 under bf16 autocast
    reference = None
    if config.loss_type != "simpo":
        values = torch.tensor([p.reference for p in part], dtype=sums.dtype, device=device)  # (n, 2)
        reference = (values[:, 0], values[:, 1])
    return pair_loss((sums[:n], sums[n:]), reference, (counts[:n], counts[n:]), config)


def forward_pairs(config: DPOConfig) -> int:
    """Pairs per forward pass outside training: a training micro-batch's (`batch_size` over the processes
    and `grad_accum`), so a run that fits in memory for training fits for these passes too."""
    return max(1, math.ceil(config.batch_size / (world() * config.grad_accum)))


@torch.no_grad()
def reference_sums(
    model: Any,
    pairs: list[PairExample],
    pad_id: int,
    device: torch.device,
    batch_size: int,
    packed: bool = False,
    budget: TokenBudget | None = None,
) -> torch.Tensor:
    """(n, 2) summed log-probs of each pair's chosen and rejected response under `model`, `batch_size`
    pairs a forward pass (or under `budget`): each process scores every N-th pass, the sums are shared."""
    sums = torch.zeros(len(pairs), 2, dtype=torch.float64)  # (n, 2)
    parts = forward_groups(pairs, batch_size, budget)  # the same on every process: from the pairs alone
    with progress(len(parts), "reference log-probs", enabled=is_main()) as bar:
        start = 0
        for i, part in enumerate(parts):
            if i % world() == rank():
                sequences = [p.chosen for p in part] + [p.rejected for p in part]
                logp, _ = response_logprobs_sum(
                    model, sequences, [p.prompt_length for p in part] * 2, pad_id, device, packed
                )  # (2b,)
                sums[start : start + len(part)] = logp.double().cpu().view(2, -1).T  # (b, 2)
            start += len(part)
            bar.update()
    return all_sum(sums)


def fingerprint(config: DPOConfig, *pair_sets: list[PairExample]) -> str:
    """What the cached reference log-probs were computed from: the reference and every pair's tokens."""
    digest = hashlib.sha256(f"{config.reference or config.model}|{config.lora.enabled}".encode())
    for pairs in pair_sets:
        for p in pairs:
            digest.update(repr((p.chosen, p.rejected, p.prompt_length)).encode())
    return digest.hexdigest()


def reference_logprobs(run: Supervised, config: DPOConfig) -> list[torch.Tensor]:
    """(n, 2) reference sums of the training and of the held-out pairs: read back when this run resumes
    and has them, else computed in one no-grad pass (the policy itself before its first step: with LoRA
    its adapter off; or the `reference` model, loaded for the pass and then freed) and kept."""
    cache, key = run.out / CHECKPOINTS / CACHE, fingerprint(config, run.train, run.held_out)
    if run.resume_from is not None and cache.is_file():
        saved = torch.load(cache, weights_only=True)
        if saved["fingerprint"] == key:
            return [saved["train"], saved["held_out"]]
    separate = config.reference is not None and config.reference != config.model
    if separate:  # in the dtype of the policy's frozen weights: with LoRA, its base's
        dtype = getattr(torch, config.model_dtype) if run.lora else torch.float32
        model = load_causal_lm(config.reference, run.tokenizer, dtype).eval().to(run.device)
        whole = nullcontext()  # the policy is not used: a sharded one stays sharded
    else:
        model = run.accelerator.unwrap_model(run.model)  # the policy, not yet stepped
        whole = run.whole_parameters()
    pad_id, size = run.tokenizer.pad_token_id, forward_pairs(config)
    packed, budget = config.padding_free, token_budget(config, pair_lengths)
    with whole, without_adapter(run, separate), autocast(run.device, config.bf16):
        found = [
            reference_sums(model, pairs, pad_id, run.device, size, packed, budget)
            for pairs in (run.train, run.held_out)
        ]
    del model
    if is_main():
        cache.parent.mkdir(parents=True, exist_ok=True)
        staging = cache.with_name(f".{CACHE}.tmp")
        torch.save({"fingerprint": key, "train": found[0], "held_out": found[1]}, staging)
        staging.replace(cache)
    return found


def without_adapter(run: Supervised, separate: bool) -> Any:
    """With LoRA the reference is the base: the adapter switched off for the pass (before the first step
    its B matrices are 0, so this is the adapted policy's output too; it says what the reference is)."""
    return run.adapted.disable_adapter() if run.lora and not separate else nullcontext()


def held_out_reference(run: Supervised, config: DPOConfig) -> ReferenceLogprobs:
    """The reference's log-probs of sampled responses, for the KL of offline DPO's sampling evaluation: with
    LoRA (and no `reference` folder) the policy with its adapter off; else a frozen copy of the reference
    held for the run (the one cost of `eval_prompts`: the log-probs of the pairs alone need no reference in
    memory)."""
    policy = run.accelerator.unwrap_model(run.model)
    if run.lora and config.reference in (None, config.model):

        def adapter_off(
            ids: torch.Tensor, mask: torch.Tensor, context: int, temperature: float
        ) -> torch.Tensor:
            with run.adapted.disable_adapter():
                return response_logprobs(policy, ids, mask, context, temperature)[0]

        return adapter_off
    dtype = getattr(torch, config.model_dtype) if run.lora else torch.float32
    frozen = load_causal_lm(config.reference or config.model, run.tokenizer, dtype).eval().to(run.device)
    frozen.requires_grad_(False)

    def frozen_copy(ids: torch.Tensor, mask: torch.Tensor, context: int, temperature: float) -> torch.Tensor:
        return response_logprobs(frozen, ids, mask, context, temperature)[0]

    return frozen_copy


def offline_dpo(config: DPOConfig) -> Path:
    """Train `config.model` on the pairs of `config.data`; returns the output folder (a causal-LM folder)."""
    check_reference(config)
    monitors = load_monitors(config)  # before anything is written
    prompts = HeldOutSampler.prompts(config, load_tokenizer(config.model)) if config.eval_prompts else None
    run = prepare(config, "preference", encode_pairs, load_causal_lm)
    run.model.eval()  # dropout off: the policy starts exactly at the reference (the first loss is log 2)
    model, accelerator, device = run.model, run.accelerator, run.device
    pad_id, nll = run.tokenizer.pad_token_id, config.nll_coef > 0
    budget = token_budget(config, pair_lengths)  # a pair's chosen and rejected in the same micro-batch
    if config.loss_type == "simpo":
        run.train = [ReferencedPair(p, None) for p in run.train]
        run.held_out = [ReferencedPair(p, None) for p in run.held_out]
    else:
        train_ref, held_ref = reference_logprobs(run, config)
        run.train = [ReferencedPair(p, tuple(r)) for p, r in zip(run.train, train_ref.tolist(), strict=True)]
        run.held_out = [
            ReferencedPair(p, tuple(r)) for p, r in zip(run.held_out, held_ref.tolist(), strict=True)
        ]

    def batch_loss(batch: list[ReferencedPair]) -> dict[str, float]:
        sums = torch.zeros(len(PAIR_METRICS), dtype=torch.float64)
        for part, weight in micro_batches(batch, config.grad_accum, budget):
            # each micro-batch weighted by its share of the global batch's pairs (times N: DDP averages)
            with autocast(device, config.bf16):
                loss, part_sums = part_loss(model, part, pad_id, device, config)
            accelerator.backward(loss * len(part) / len(batch) * world() * weight)
            sums += part_sums.cpu() * weight
        return named(all_sum(sums), len(batch), nll)

    @torch.no_grad()
    def held_out_metrics() -> dict[str, float]:
        policy = accelerator.unwrap_model(model)  # no DDP hooks: the main process evaluates alone
        sums = torch.zeros(len(PAIR_METRICS), dtype=torch.float64)
        for part in forward_groups(run.held_out, forward_pairs(config), budget):
            with autocast(device, config.bf16):
                _, part_sums = part_loss(policy, part, pad_id, device, config)
            sums += part_sums.cpu()
        return named(sums, len(run.held_out), nll, prefix="eval/")

    run.batch_loss, run.held_out_metrics = batch_loss, (held_out_metrics if run.held_out else None)
    if prompts is not None and is_main():  # the main process alone evaluates
        for monitor in monitors:
            if isinstance(monitor, ModelScorer):
                monitor.to(device)
        reference = held_out_reference(run, config)
        sampler = HeldOutSampler(config, run.tokenizer, *prompts, reference, monitors)
        run.held_out_samples = lambda: sampler(accelerator.unwrap_model(model))
    elif prompts is not None:
        run.held_out_samples = lambda: ({}, [])  # not called: only the main process evaluates
    record = run.run("dpo")
    final = {k: v for k, v in record.items() if k in PAIR_METRICS or k.startswith(("eval/", "monitor/"))}
    run.finish("dpo", train_pairs=len(run.train), eval_pairs=len(run.held_out), final=final)
    return run.out
