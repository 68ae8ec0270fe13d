"""What `sft` and `rm` share: data and model set-up, and the run-loop trainer that takes one guarded optimiser
step per batch. Each stage passes in its batch loss and its held-out metrics."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import torch

from rlhfkit.config import OptimConfig, SupervisedConfig
from rlhfkit.data import load_records
from rlhfkit.data.order import batch_indices
from rlhfkit.errors import UsageError
from rlhfkit.models import load_tokenizer, save_model
from rlhfkit.models.lora import add_adapter, remove_stale_adapter, save_adapted, unsharded_twin
from rlhfkit.models.packing import budget_groups, check_packing
from rlhfkit.runtime.card import model_kind, run_card, write_card
from rlhfkit.runtime.distributed import all_max, barrier, is_main, rank, world
from rlhfkit.runtime.loop import UpdateGuard, guarded_update, run_loop
from rlhfkit.runtime.outputs import begin, check_output, clear_checkpoints, write_run_file
from rlhfkit.runtime.process import make_accelerator, quiet_transformers, set_seed
from rlhfkit.runtime.sharding import (
    adamw,
    check_layout,
    checkpoint_layout,
    is_sharded,
    launch,
    load_model_state,
    load_optimizer_state,
    model_state,
    optimizer_state,
    start,
    whole_parameters,
)
from rlhfkit.runtime.trackers import Trackers, check_trackers

T = TypeVar("T")


def train_and_eval_records(
    data: str,
    eval_data: str | None,
    eval_fraction: float,
    kind: str,
    seed: int,
    columns: Any = None,
    margin_from_scores: bool = False,
) -> tuple[list[dict], list[dict]]:
    """Validated training and held-out records; without `eval_data` a seeded `eval_fraction` is held out."""
    records = load_records(data, kind, columns=columns, margin_from_scores=margin_from_scores)
    if eval_data:
        return records, load_records(eval_data, kind, columns=columns, margin_from_scores=margin_from_scores)
    if len(records) < 2 or eval_fraction <= 0:
        return records, []
    n_eval = min(len(records) - 1, max(1, round(eval_fraction * len(records))))
    order = torch.randperm(len(records), generator=torch.Generator().manual_seed(seed)).tolist()
    return [records[i] for i in order[n_eval:]], [records[i] for i in order[:n_eval]]


@dataclass(frozen=True)
class TokenBudget:
    """`max_tokens_per_micro_batch`: passes filled to at most `tokens` tokens instead of a fixed count of
    examples. An example is one sequence (sft), or a pair whose chosen and rejected go in the same pass."""

    tokens: int
    packed: bool  # padding-free passes count real tokens; padded ones rows x the longest row
    sequences: Callable[[Any], Sequence[int]]  # the lengths of the sequences an example puts in a pass

    def cost(self, example: Any) -> int:
        """What `example` adds to a pass, in the terms of `models.packing.budget_groups`: its tokens when
        packed; padded, its rows x its longest (a group's cost is then its rows x its longest row)."""
        lengths = self.sequences(example)
        return sum(lengths) if self.packed else len(lengths) * max(lengths)

    def groups(self, examples: Sequence[T]) -> list[list[T]]:
        """`examples` in consecutive groups of at most `tokens` tokens a pass (an over-long example alone)."""
        costs = [self.cost(e) for e in examples]
        return [[examples[i] for i in group] for group in budget_groups(costs, self.tokens, self.packed)]


def token_budget(config: Any, sequences: Callable[[Any], Sequence[int]]) -> TokenBudget | None:
    """The run's token budget for examples made of `sequences`, or None for the fixed counts."""
    tokens = config.max_tokens_per_micro_batch
    return None if tokens is None else TokenBudget(tokens, config.padding_free, sequences)


def micro_batches(
    batch: Sequence[T], grad_accum: int, budget: TokenBudget | None = None
) -> list[tuple[list[T], float]]:
    """This process's micro-batches of a global batch (its every N-th example, from its rank, in up to
    `grad_accum` parts, or in groups under a token `budget`), each with a weight factor: 1, or 0 for a
    stand-in. Every process gets the same number (DDP needs as many backward passes everywhere; FSDP's
    forwards are collective): one whose share falls short (a short last batch, or fewer groups under the
    budget) runs stand-in passes on the batch's first example that count for nothing."""
    mine = list(batch[rank() :: world()])
    if budget is None:
        parts = max(1, min(grad_accum, math.ceil(len(batch) / world())))
        real = split(mine, parts) if mine else []
    else:
        real = budget.groups(mine)
        parts = max(1, int(all_max(torch.tensor(len(real))).item()))  # the most any process needs
    return [(part, 1.0) for part in real] + [([batch[0]], 0.0)] * (parts - len(real))


def forward_groups(examples: Sequence[T], size: int, budget: TokenBudget | None = None) -> list[list[T]]:
    """`examples` in consecutive groups for no-grad passes: `size` a pass, or under the token `budget`."""
    if budget is not None:
        return budget.groups(examples)
    return [list(examples[start : start + size]) for start in range(0, len(examples), size)]


def split(items: Sequence[T], parts: int) -> list[list[T]]:
    """`items` in `parts` contiguous, nearly equal, non-empty chunks (gradient-accumulation micro-batches)."""
    parts = max(1, min(parts, len(items)))
    size, extra = divmod(len(items), parts)
    bounds = [i * size + min(i, extra) for i in range(parts + 1)]
    return [list(items[bounds[i] : bounds[i + 1]]) for i in range(parts)]


def make_optimizer(
    model: torch.nn.Module, optim: OptimConfig, steps: int, accelerator: Any
) -> tuple[Any, Any]:
    """AdamW and a warm-up + decay schedule over `steps` optimiser steps."""
    optimizer = adamw(
        model,
        [{"params": [p for p in model.parameters() if p.requires_grad]}],
        accelerator,
        lr=optim.lr,
        weight_decay=optim.weight_decay,
        eps=optim.adam_eps,
    )
    return optimizer, make_scheduler(optimizer, optim, steps)


def make_scheduler(optimizer: torch.optim.Optimizer, optim: OptimConfig, steps: int) -> Any:
    """The learning-rate schedule of `optim` over `steps` optimiser steps: warm-up, then decay."""
    from transformers import get_scheduler

    name = "constant_with_warmup" if optim.schedule == "constant" else optim.schedule
    warmup = math.ceil(optim.warmup_ratio * steps)
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=steps)


@dataclass
class Supervised:
    """A supervised run ready for its first step: the run loop's trainer for `sft` and `rm`."""

    config: SupervisedConfig
    out: Path
    resume_from: Path | None  # the checkpoint to continue from, or None
    tokenizer: Any
    train: list
    held_out: list
    steps: int
    model: Any  # the trained module, prepared by accelerate
    hf_model: Any  # the Hugging Face model inside it: what is saved and checkpointed
    optimizer: Any
    scheduler: Any
    accelerator: Any
    adapted: Any = None  # with LoRA: the PeftModel around `hf_model` (what saves the adapter)
    # forward + backward of this process's share of a global batch; returns the stats of the whole batch
    batch_loss: Callable[[list], dict[str, float]] | None = None
    held_out_metrics: Callable[[], dict[str, float]] | None = None
    # samples drawn at each evaluation and their metrics (offline DPO with `eval_prompts`)
    held_out_samples: Callable[[], tuple[dict[str, float], list[dict]]] | None = None

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    def step(self, step: int, guard: UpdateGuard) -> dict[str, Any]:
        config, accelerator = self.config, self.accelerator
        epoch, indices = batch_indices(
            len(self.train), config.batch_size, config.seed, step - 1, drop_last=False
        )
        stats = self.batch_loss([self.train[i] for i in indices])
        (grad_norm,), _ = guarded_update(
            self.optimizer,
            self.scheduler,
            accelerator,
            [self.model.parameters()],
            config.optim.max_grad_norm,
            [stats["loss"]],
            guard,
        )
        return {"epoch": epoch, **stats, "grad_norm": grad_norm, "lr": self.scheduler.get_last_lr()[0]}

    def evaluate(self, step: int) -> tuple[dict[str, Any], list[dict]] | None:
        """The main process evaluates (it alone writes the metrics); the others go on to the next step."""
        if self.held_out_metrics is None and self.held_out_samples is None:
            return None
        with self.whole_parameters():  # a sharded model is gathered by every process
            if not is_main():
                return None
            metrics, samples = self.held_out_samples() if self.held_out_samples else ({}, [])
            return (self.held_out_metrics() if self.held_out_metrics else {}) | metrics, samples

    def whole_parameters(self) -> Any:
        """Forward passes outside training with the parameters gathered once when the model is sharded
        (`rlhfkit.runtime.sharding`); nothing otherwise."""
        return whole_parameters(self.accelerator, self.model)

    def state(self) -> dict[str, Any]:
        accelerator, model = self.accelerator, self.model
        return {
            "layout": checkpoint_layout(accelerator, self.config.lora),
            "model": model_state(accelerator, model, part=self.hf_model, trained_only=self.lora),
            "optimizer": optimizer_state(accelerator, model, self.optimizer),
            "scheduler": self.scheduler.state_dict(),
        }

    def restore(self, state: dict[str, Any]) -> None:
        check_layout(state.get("layout"), checkpoint_layout(self.accelerator, self.config.lora))
        load_model_state(
            self.accelerator, self.model, state["model"], part=self.hf_model, trained_only=self.lora
        )
        load_optimizer_state(self.accelerator, self.model, self.optimizer, state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])

    def postfix(self, record: dict[str, Any]) -> dict[str, str]:
        return {"loss": f"{record['loss']:.3f}"}

    @property
    def lora(self) -> bool:
        """Whether only adapters (and a head) train: checkpoints then hold those alone."""
        return self.adapted is not None

    def run(self, name: str) -> dict[str, Any]:
        """All steps through the run loop; returns the last record."""
        trackers = Trackers(self.accelerator, f"rlhfkit-{name}", self.config)
        try:
            return run_loop(
                self, self.out, self.config, self.steps, name, self.resume_from, trackers=trackers
            )
        finally:
            trackers.finish()

    def finish(self, command: str, **summary: Any) -> None:
        """Save the model folder, its model card (README.md, tagged with `command`; `summary["final"]` its
        numbers) and the run file; drop the checkpoints (the model is saved). Every process calls (a sharded
        model's weights are gathered); the main one writes. With LoRA the folder holds the merged model and
        `OUT/adapter` the adapter."""
        sharded = is_sharded(self.accelerator)  # then the weights are gathered whole, adapters or not
        gather = sharded or not self.lora
        weights = model_state(self.accelerator, self.model, part=self.hf_model) if gather else None
        if is_main():
            kind = model_kind(self.hf_model)
            if self.lora:
                adapted = unsharded_twin(self.adapted, weights) if sharded else self.adapted
                save_adapted(adapted, self.tokenizer, self.out, self.out / "adapter", save_model)
            else:
                save_model(self.hf_model, self.tokenizer, self.out, state_dict=weights)
                remove_stale_adapter(self.out / "adapter")
            card = run_card(command, self.config, summary.get("final", {}), self.config.model, kind)
            write_card(self.out, card)
            if self.lora:
                write_card(self.out / "adapter", replace(card, adapter=True))
            write_run_file(self.out, command, self.config, launch=launch(self.accelerator), **summary)
            if self.lora:  # the adapter folder stands for the model too (an RM's reward_stats with it)
                write_run_file(
                    self.out / "adapter", command, self.config, launch=launch(self.accelerator), **summary
                )
            clear_checkpoints(self.out)
        barrier()


def prepare(
    config: SupervisedConfig,
    kind: str,
    encode: Callable,
    load_model: Callable,
    wrap: Callable[[Any], torch.nn.Module] = lambda model: model,
) -> Supervised:
    """Everything before the first step of `sft` / `rm`. All user input (folder, data rows, model) is checked
    before the output folder is touched. `wrap` makes the module whose forward the trainer calls (prepared
    once by accelerate) around the Hugging Face model."""

    out = Path(config.out)
    resume_from = check_output(out, config.overwrite, config.resume)
    check_trackers(config.report_to)
    quiet_transformers()
    tokenizer = load_tokenizer(config.model)
    train_records, eval_records = train_and_eval_records(
        config.data,
        config.eval_data,
        config.eval_fraction,
        kind,
        config.seed,
        config.columns,
        getattr(config, "margin_from_scores", False),
    )
    train = encode(train_records, tokenizer, config.max_length, config.truncation, config.data)
    held_out = encode(
        eval_records, tokenizer, config.max_length, config.truncation, config.eval_data or config.data
    )
    if config.batch_size % world():
        raise UsageError(f"batch_size ({config.batch_size}) must be divisible by the {world()} processes")
    steps = config.max_steps or config.epochs * math.ceil(len(train) / config.batch_size)
    set_seed(config.seed)
    adapted = None
    if config.lora.enabled:  # a frozen base in `model_dtype`, an adapter (and head) trained in fp32
        base = load_model(config.model, tokenizer, getattr(torch, config.model_dtype))
        adapted = add_adapter(base, config.lora, config.model)
        hf_model = adapted.get_base_model()
    else:
        hf_model = load_model(config.model, tokenizer)
    if config.padding_free:  # on the unwrapped model, before anything is written
        check_packing(hf_model, config.model)
    accelerator = make_accelerator(config.report_to, out)
    optimizer, scheduler = make_optimizer(hf_model, config.optim, steps, accelerator)
    model, optimizer = accelerator.prepare(wrap(hf_model), optimizer)
    start(accelerator, model)
    model.train()
    begin(out, resume_from)
    return Supervised(
        config,
        out,
        resume_from,
        tokenizer,
        train,
        held_out,
        steps,
        model,
        hf_model,
        optimizer,
        scheduler,
        accelerator,
        adapted,
    )
