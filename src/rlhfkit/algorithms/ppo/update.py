"""Step 8 of a PPO iteration: `ppo_epochs` passes of clipped policy and value updates over the experience."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from rlhfkit.algorithms.ppo.experience import Experience, Normalise, agreed_passes, budget_slices
from rlhfkit.algorithms.sft import completion_nll
from rlhfkit.config import PPOConfig
from rlhfkit.core import kl_penalty_loss, loss_count, ppo_policy_loss, value_loss
from rlhfkit.data import IGNORE, encode_sft
from rlhfkit.data.schema import LazyRecords
from rlhfkit.errors import UsageError
from rlhfkit.runtime.distributed import all_max, all_sum, local_rows, world
from rlhfkit.runtime.loop import UpdateGuard, guarded_update
from rlhfkit.runtime.process import autocast


@dataclass
class Optimisation:
    """The trained module (prepared by accelerate) with its optimiser, schedule and random stream."""

    model: Any  # PolicyAndValue, possibly wrapped by accelerate
    optimizer: torch.optim.Optimizer
    scheduler: Any
    accelerator: Any
    generator: torch.Generator  # minibatch shuffles and ptx draws
    critic_scale: Normalise  # the critic's raw values -> the scale of the returns
    ptx: Callable[[], list] | None  # draws a ptx batch, or None when the term is off
    pad_id: int


def ptx_sampler(config: PPOConfig, tokenizer: Any, generator: torch.Generator) -> Callable[[], list] | None:
    """Batches of the pretraining/SFT data for the ptx term, or None when the term is off (nothing is drawn,
    so the random stream is the same as without ptx data). The data is read lazily (`LazyRecords`): every
    row is checked at start-up, then only the drawn rows are read and tokenised, so a pretraining corpus far
    larger than the prompt set does not sit in memory. A drawn row too long to keep (an SFT row whose
    completion alone passes `ptx_max_length`) is drawn again; after 10 draws that leave the batch short, the
    rest is drawn from the rows known to fit (the first 256 that fit, found at start-up, so never none): a
    corpus of mostly long rows cannot stop a run mid-training, past its last checkpoint."""
    import logging

    if config.ptx_coef <= 0 or not config.ptx_data:
        return None
    records = LazyRecords(config.ptx_data, "sft", config.ptx_columns)
    source, size = config.ptx_data, config.mini_batch_size

    def encode(rows: list[int]) -> list:
        return encode_sft(
            [records[i] for i in rows], tokenizer, config.ptx_max_length, source=source, quiet=True
        )

    fits = [i for i in range(min(len(records), 256)) if encode([i])]  # before anything is written
    if not fits:
        raise UsageError(f"{source}: no row of the first 256 fits ptx_max_length={config.ptx_max_length}")
    warned: list[bool] = []

    def sample() -> list:
        examples: list = []
        for _ in range(10):
            examples += encode(
                torch.randint(len(records), (size - len(examples),), generator=generator).tolist()
            )
            if len(examples) == size:
                return examples
        if not warned:
            warned.append(True)
            logging.getLogger("rlhfkit").warning(
                "%s: drawn rows keep being longer than ptx_max_length=%d; ptx batches are filled from the %d "
                "rows of the first 256 that fit",
                source, config.ptx_max_length, len(fits),
            )  # fmt: skip
        rest = torch.randint(len(fits), (size - len(examples),), generator=generator).tolist()
        return examples + encode([fits[j] for j in rest])

    return sample


@dataclass(frozen=True)
class Shares:
    """A micro-batch's shares of its minibatch (0-dim each): of the valid tokens, for the token means (value
    loss, statistics), and of what the policy loss divides by (`core.loss_count` of `loss_aggregation`: the
    tokens, or the responses). Weighted by them, micro-batches and processes sum to the minibatch's value."""

    tokens: torch.Tensor
    policy: torch.Tensor


def micro_batch_loss(
    opt: Optimisation, exp: Experience, rows: torch.Tensor, kl_coef: float, config: PPOConfig, shares: Shares
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO loss of actor and critic on the experience rows `rows`, and its statistics, each term weighted by
    the rows' share of the minibatch (docs/ppo-details.md #18)."""
    mask = exp.mask[rows]  # (m, T)
    with autocast(exp.input_ids.device, config.bf16):
        logp, values, _ = opt.model(
            exp.input_ids[rows],
            exp.attention_mask[rows],
            exp.context,
            config.temperature,
            packed=config.padding_free,
        )  # (m, T), (m, T)
    # Dr. GRPO's constant normaliser is the generation budget, the same for every batch and process: the
    # policy's tokens of `max_turns` turns in a multi-turn episode
    budget = config.response_length * (config.max_turns if config.environment else 1)
    aggregation, normaliser = config.loss_aggregation, budget
    pg_loss, pg = ppo_policy_loss(
        logp, exp.old_logp[rows], exp.advantages[rows], mask, config.clip, config.clip_high, aggregation,
        config.ratio_level, normaliser,
    )  # fmt: skip
    loss, by_policy = pg_loss * shares.policy, {"loss/policy": pg_loss.detach()}
    by_tokens = {f"policy/{k}": pg[k] for k in ("approx_kl", "clipfrac", "ratio_mean", "ratio_sq_mean")}
    if values is not None:  # GAE: the critic's clipped value loss
        values = opt.critic_scale(values)  # (m, T)
        vf_loss, vf = value_loss(values, exp.old_values[rows], exp.returns[rows], mask, config.value_clip)
        loss = loss + config.vf_coef * vf_loss * shares.tokens
        by_tokens = {**by_tokens, "loss/value": vf_loss.detach(), "val/clipfrac": vf["clipfrac"]}
    if config.kl_penalty == "loss":  # the GRPO placement: beta * KL estimate, with its gradient
        ref_logp = exp.ref_logp[rows]  # (m, T)
        kl_loss = kl_penalty_loss(logp, ref_logp, mask, config.kl_estimator, aggregation, normaliser)
        loss, by_policy = loss + kl_coef * kl_loss * shares.policy, {**by_policy, "loss/kl": kl_loss.detach()}
    ratio_deviation = ((logp.detach() - exp.old_logp[rows]).exp() - 1).abs().masked_fill(~mask, 0).max()
    stats = {
        **{k: v * shares.policy for k, v in by_policy.items()},
        **{k: v * shares.tokens for k, v in by_tokens.items()},
    }
    return loss, {**stats, "ratio_deviation": ratio_deviation}


def ptx_step(opt: Optimisation, config: PPOConfig, device: torch.device) -> float:
    """Backward of `ptx_coef` times the token-mean NLL of a ptx batch (`mini_batch_size` examples drawn for
    the whole run, each process taking its share, through the trained module's forward so DDP syncs the
    gradient); returns that NLL."""
    examples = opt.ptx()
    mine = examples[local_rows(len(examples))]
    n_tokens = sum(1 for e in examples for t in e.labels[1:] if t != IGNORE)  # of the whole ptx batch
    with autocast(device, config.bf16):
        # the module acts as the policy LM (a packed pass's position ids go through to it)
        nll, n = completion_nll(opt.model, mine, opt.pad_id, device, packed=config.padding_free)
    opt.accelerator.backward(config.ptx_coef * nll * n / n_tokens * world())
    return all_sum(nll.detach().double() * n).item() / n_tokens


def micro_batch_rows(exp: Experience, rows: torch.Tensor, config: PPOConfig) -> list[torch.Tensor]:
    """This process's rows of a minibatch (global indices) in micro-batches: by `max_tokens_per_micro_batch`
    when set (consecutive rows, each pass at most that many tokens), else `micro_batch_size` rows each."""
    slices = budget_slices(exp.attention_mask[rows], config)
    if slices is None:
        return list(rows.split(config.micro_batch_size or config.mini_batch_size))
    return [rows[s] for s in slices]


def minibatch_step(
    opt: Optimisation,
    exp: Experience,
    rows: torch.Tensor,
    kl_coef: float,
    config: PPOConfig,
    guard: UpdateGuard,
) -> dict[str, float] | None:
    """One optimiser step of actor and critic on a minibatch (global row indices), accumulated over this
    process's micro-batches. Each micro-batch is weighted by its share of the whole minibatch's tokens (and
    of its responses, for a policy loss aggregated by response): the sum over micro-batches and processes is
    the minibatch's loss, however split (times N for the gradient: DDP averages it over the processes).
    None, and no step, when every row of the minibatch is left out (`drop_uniform_groups`)."""
    mask = exp.mask[rows]  # (m, T), the same on every process
    tokens, units = mask.sum(), loss_count(mask, config.loss_aggregation)
    if units == 0:  # nothing to learn from: an optimiser step would still move the weights (momentum)
        return None
    stats: dict[str, float] = {"loss/ptx": 0.0}  # stays 0 with the ptx term off
    deviation = 0.0
    parts = micro_batch_rows(exp, rows[local_rows(len(rows))], config)
    # every process runs as many passes (DDP syncs each backward): a stand-in on this process's first row
    # weighs nothing
    stand_ins = [(parts[0][:1], 0.0)] * (agreed_passes(len(parts), config) - len(parts))
    for part, weight in [(part, 1.0) for part in parts] + stand_ins:
        part_mask = exp.mask[part]  # (p, T)
        shares = Shares(
            part_mask.sum() / tokens * weight, loss_count(part_mask, config.loss_aggregation) / units * weight
        )
        loss, part_stats = micro_batch_loss(opt, exp, part, kl_coef, config, shares)
        opt.accelerator.backward(loss * world())
        deviation = max(deviation, part_stats.pop("ratio_deviation").item() * weight)
        for key, value in part_stats.items():
            stats[key] = stats.get(key, 0.0) + value.item()
    summed = all_sum(torch.tensor(list(stats.values()), dtype=torch.float64)).tolist()
    stats = dict(zip(stats, summed, strict=True))
    stats["ratio_deviation"] = float(all_max(torch.tensor(deviation, dtype=torch.float64)))
    # the minibatch's ratio variance from its token means (not a mean of micro-batch variances)
    stats["policy/ratio_var"] = stats.pop("policy/ratio_sq_mean") - stats["policy/ratio_mean"] ** 2
    if opt.ptx is not None:
        stats["loss/ptx"] = ptx_step(opt, config, exp.input_ids.device)
    policy = opt.accelerator.unwrap_model(opt.model).policy
    # Both roles step, or neither: a non-finite loss or gradient norm skips the update (docs/ppo-details.md
    # #21). Each role's gradient is clipped on its own.
    value = opt.accelerator.unwrap_model(opt.model).value
    roles = [policy.parameters()] + ([] if value is None else [value.parameters()])
    _, applied = guarded_update(
        opt.optimizer,
        opt.scheduler,
        opt.accelerator,
        roles,
        config.max_grad_norm,
        [stats["loss/policy"], stats.get("loss/value", 0.0), stats["loss/ptx"]],
        guard,
    )
    return {**stats, "skipped": float(not applied)}


def ppo_update(
    opt: Optimisation, experience: Experience, kl_coef: float, config: PPOConfig, guard: UpdateGuard
) -> dict[str, float]:
    """Step 8: `ppo_epochs` passes over shuffled minibatches of `mini_batch_size` episodes; returns the mean
    statistics, and the ratio deviation of the very first minibatch (still the old policy: ~0). Stops early
    when the guard has seen too many non-finite updates in a row. A minibatch whose rows are all left out
    (`drop_uniform_groups`) takes no step; when every one is, the update is empty ({})."""
    rows, history = experience.input_ids.shape[0], []
    for _ in range(config.ppo_epochs):
        order = torch.randperm(rows, generator=opt.generator)  # (B,)
        for start in range(0, rows, config.mini_batch_size):
            rows_here = order[start : start + config.mini_batch_size]
            stats = minibatch_step(opt, experience, rows_here, kl_coef, config, guard)
            history += [] if stats is None else [stats]
            if guard.diverged:
                break
        if guard.diverged:
            break
    if not history:  # every row left out (drop_uniform_groups): no step taken, nothing to report
        return {}
    applied = [h for h in history if not h["skipped"]] or history  # a skipped step's numbers are not finite
    means = {
        k: sum(h[k] for h in applied) / len(applied)
        for k in history[0]
        if k not in ("ratio_deviation", "skipped")
    }
    return {**means, "policy/first_ratio_deviation": history[0]["ratio_deviation"]}
