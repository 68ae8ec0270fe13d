"""Stage 1: supervised fine-tuning. The loss is the token-mean NLL of the completion / assistant tokens."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from rlhfkit.config import SFTConfig
from rlhfkit.core import ptx_loss
from rlhfkit.data import IGNORE, SFTExample, encode_sft, pad
from rlhfkit.logging import MetricsLog, progress
from rlhfkit.models import load_causal_lm, load_tokenizer
from rlhfkit.trainers.common import (
    autocast,
    batches,
    check_output_dir,
    finish_run,
    make_optimizer,
    quiet_transformers,
    set_seed,
    split,
    start_run,
    total_steps,
    train_and_eval_records,
)


def collate(examples: list[SFTExample], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded (B, L) input ids, attention mask and labels (IGNORE at prompt and padding)."""
    ids, mask = pad([e.input_ids for e in examples], pad_id)  # (B, L), (B, L)
    labels, _ = pad([e.labels for e in examples], IGNORE)  # (B, L)
    return ids, mask, labels


def completion_nll(
    model: Any, examples: list[SFTExample], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, int]:
    """Mean NLL over the completion tokens of `examples` and how many there are."""
    ids, mask, labels = (t.to(device) for t in collate(examples, pad_id))
    logits = model(input_ids=ids, attention_mask=mask).logits  # (B, L, V)
    targets = labels[:, 1:]  # (B, L-1): logits at t predict token t + 1
    valid = targets != IGNORE  # (B, L-1)
    return ptx_loss(logits[:, :-1], targets, valid), int(valid.sum())


@torch.no_grad()
def evaluate(
    model: Any, examples: list[SFTExample], pad_id: int, device: torch.device, batch_size: int
) -> float:
    """Token-mean NLL of the held-out completions."""
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(examples), batch_size):
        loss, n = completion_nll(model, examples[start : start + batch_size], pad_id, device)
        total, count = total + loss.item() * n, count + n
    model.train()
    return total / max(count, 1)


def sft(config: SFTConfig) -> Path:
    """Fine-tune `config.model` on `config.data`; returns the output folder (a causal-LM folder)."""
    from accelerate import Accelerator

    out = Path(config.out)
    # Everything the user gave is checked before the output folder is touched.
    check_output_dir(out, config.overwrite)
    quiet_transformers()
    tokenizer = load_tokenizer(config.model)
    train_records, eval_records = train_and_eval_records(
        config.data, config.eval_data, config.eval_fraction, "sft", config.seed
    )
    train = encode_sft(train_records, tokenizer, config.max_length, config.truncation, config.data)
    held_out = encode_sft(
        eval_records, tokenizer, config.max_length, config.truncation, config.eval_data or config.data
    )
    steps = total_steps(len(train), config.batch_size, config.epochs, config.max_steps)
    set_seed(config.seed)
    model = load_causal_lm(config.model, tokenizer)

    accelerator = Accelerator()
    optimizer, scheduler = make_optimizer(model, config.optim, steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()
    start_run(out)
    pad_id, device = tokenizer.pad_token_id, accelerator.device
    with (
        MetricsLog(out / "metrics.jsonl") as metrics,
        progress(steps, "sft", accelerator.is_main_process) as bar,
    ):
        started = time.perf_counter()
        for step, (epoch, batch) in enumerate(batches(train, config.batch_size, steps, config.seed), start=1):
            batch = batch[accelerator.process_index :: accelerator.num_processes]
            micro = split(batch, config.grad_accum)
            n_tokens = sum(1 for e in batch for t in e.labels[1:] if t != IGNORE)
            loss_sum = 0.0
            for part in micro:
                # Weighted by its share of the batch's tokens: the sum over micro-batches is the token mean
                # of the whole batch, however it is split.
                with autocast(device, config.bf16):
                    loss, n = completion_nll(model, part, pad_id, device)
                accelerator.backward(loss * n / n_tokens)
                loss_sum += loss.item() * n
            grad_norm = accelerator.clip_grad_norm_(
                model.parameters(), config.optim.max_grad_norm or float("inf")
            )
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            record = {
                "step": step,
                "epoch": epoch,
                "loss": loss_sum / n_tokens,
                "grad_norm": grad_norm,
                "lr": scheduler.get_last_lr()[0],
                "tokens": n_tokens,
                "steps_per_s": step / (time.perf_counter() - started),
            }
            if held_out and (step == steps or (config.eval_every and step % config.eval_every == 0)):
                with autocast(device, config.bf16):
                    record["eval/loss"] = evaluate(model, held_out, pad_id, device, config.batch_size)
            metrics.write(record)
            bar.set_postfix(loss=f"{record['loss']:.3f}")
            bar.update()
    final = {k: v for k, v in record.items() if k in ("loss", "eval/loss")}
    finish_run(
        out,
        "sft",
        config,
        accelerator.unwrap_model(model),
        tokenizer,
        train_examples=len(train),
        eval_examples=len(held_out),
        final=final,
    )
    return out
