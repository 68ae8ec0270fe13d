"""Stage 3: PPO with four roles — actor (trained), critic (trained), reference and reward model (frozen).

One iteration, as numbered steps that call `rlhfkit.core`:
  1. sample prompts   2. rollout   3. old log-probs and values   4. scores   5. reference log-probs
  6. KL-shaped rewards   7. GAE + advantage whitening   8. PPO epochs   9. log   10. evaluate and save
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rlhfkit.config import PPOConfig
from rlhfkit.core import (
    AdaptiveKLController,
    FixedKLController,
    explained_variance,
    gae,
    kl_shaped_rewards,
    masked_mean,
    masked_whiten,
    ppo_policy_loss,
    sequence_kl,
    value_loss,
)
from rlhfkit.data import encode_prompts, encode_sft, load_records, pad
from rlhfkit.errors import Diverged, Stopped, UsageError
from rlhfkit.runtime.metrics import MetricsLog, progress
from rlhfkit.models import load_causal_lm, load_scalar_model, load_tokenizer, sequence_scores
from rlhfkit.models.forward import response_logprobs, response_values
from rlhfkit.rollout import Rollout, SamplingSettings, generate
from rlhfkit.runtime.checkpoint import (
    StopSignals,
    begin,
    check_output,
    clear_checkpoints,
    load_checkpoint,
    save_checkpoint,
    truncate_jsonl,
)
from rlhfkit.runtime.common import (
    autocast,
    quiet_transformers,
    read_run_file,
    set_seed,
    write_run_file,
)
from rlhfkit.algorithms.sft import completion_nll

log = logging.getLogger("rlhfkit")
EVAL_PROMPTS = 32  # held out from `prompts` when no `eval_prompts` are given


@dataclass
class Roles:
    actor: Any
    critic: Any
    reference: Any
    reward_model: Any
    tokenizer: Any


@dataclass
class Experience:
    """One iteration's batch, fixed during the PPO epochs. Response tensors are (B, T)."""

    input_ids: torch.Tensor  # (B, P + T)
    attention_mask: torch.Tensor  # (B, P + T)
    context: int  # P
    mask: torch.Tensor  # (B, T) bool: valid response tokens
    old_logp: torch.Tensor
    old_values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor


# ------------------------------------------------------------------------------------------ set-up


def freeze(model: Any) -> Any:
    """Frozen role: no gradients, eval mode (dropout off), never stepped."""
    model.requires_grad_(False)
    return model.eval()


def load_roles(config: PPOConfig) -> Roles:
    """Actor and reference from the SFT folder, critic and RM from the RM folder; dropout off in all four."""
    tokenizer = load_tokenizer(config.policy)
    rm_tokenizer = load_tokenizer(config.reward_model)
    if rm_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise UsageError(
            f"{config.reward_model}: the reward model's tokenizer does not match the policy's "
            f"({config.policy}); train the RM from the SFT model"
        )
    actor = load_causal_lm(config.policy, tokenizer).eval()  # eval(): dropout off during rollout and training
    critic = load_scalar_model(config.reward_model, tokenizer).eval()
    reference = freeze(load_causal_lm(config.policy, tokenizer))
    reward_model = freeze(load_scalar_model(config.reward_model, tokenizer))
    return Roles(actor, critic, reference, reward_model, tokenizer)


def stop_token_ids(tokenizer: Any, stop_tokens: tuple[str, ...]) -> torch.Tensor:
    """EOS plus each extra stop string, which must be a single token."""
    ids = [tokenizer.eos_token_id]
    for text in stop_tokens:
        encoded = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(encoded) != 1:
            raise UsageError(
                f"stop token {text!r} is {len(encoded)} tokens for this tokenizer; it must be one"
            )
        ids.append(encoded[0])
    return torch.tensor(sorted(set(ids)))


def reward_normaliser(config: PPOConfig) -> Callable[[torch.Tensor], torch.Tensor]:
    """Raw RM scores -> the scores PPO uses: normalised with the RM's saved stats when asked."""
    stats = read_run_file(config.reward_model).get("reward_stats")
    if not config.normalize_reward:
        return lambda scores: scores
    if not stats:
        log.warning(
            "%s has no reward_stats (not trained by `rlhfkit rm`): scores are not normalised",
            config.reward_model,
        )
        return lambda scores: scores
    mean, std = stats["mean"], max(stats["std"], 1e-6)
    return lambda scores: (scores - mean) / std


def linear_decay(optimizer: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1.0 - step / total_steps))


def prompt_batches(prompts: list[list[int]], batch_size: int, seed: int) -> Iterator[list[list[int]]]:
    """Endless batches of prompts, reshuffled every pass over the set (step 1)."""
    epoch = 0
    while True:
        order = torch.randperm(len(prompts), generator=torch.Generator().manual_seed(seed + epoch)).tolist()
        for start in range(0, len(order) - batch_size + 1, batch_size):
            yield [prompts[i] for i in order[start : start + batch_size]]
        epoch += 1


# ------------------------------------------------------------------------------------ experience


def row_slices(rows: int, chunk: int) -> list[slice]:
    """Slices of at most `chunk` rows: no-grad passes go by chunks to bound their memory."""
    return [slice(s, min(s + chunk, rows)) for s in range(0, rows, chunk)]


def batched_logprobs(
    model: Any,
    ids: torch.Tensor,
    attention: torch.Tensor,
    context: int,
    temperature: float,
    chunk: int,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`response_logprobs` over row chunks: (B, T) log-probs and, if asked, (B, T) entropies."""
    parts = [
        response_logprobs(model, ids[s], attention[s], context, temperature, with_entropy)
        for s in row_slices(ids.shape[0], chunk)
    ]
    entropy = torch.cat([p[1] for p in parts]) if with_entropy else None
    return torch.cat([p[0] for p in parts]), entropy


@torch.no_grad()
def score(reward_model: Any, rollout: Rollout, normalise: Callable, config: PPOConfig, chunk: int) -> tuple:
    """Step 4: (scores used in the reward, raw RM scores), both (B,). The RM reads the last non-pad token."""
    ids, mask = rollout.input_ids, rollout.attention_mask  # (B, P + T)
    raw = torch.cat([sequence_scores(reward_model, ids[s], mask[s]) for s in row_slices(ids.shape[0], chunk)])
    scores = normalise(raw)
    if config.reward_clip is not None:
        scores = scores.clamp(-config.reward_clip, config.reward_clip)
    if config.missing_eos_penalty is not None:
        scores = torch.where(rollout.stopped, scores, torch.full_like(scores, config.missing_eos_penalty))
    return scores, raw


@torch.no_grad()
def make_experience(
    roles: Roles,
    rollout: Rollout,
    kl_coef: float,
    normalise: Callable,
    config: PPOConfig,
) -> tuple[Experience, dict[str, torch.Tensor]]:
    """Steps 3-7: everything PPO needs from one rollout, and the iteration's objective statistics."""
    ids, attention = rollout.input_ids, rollout.attention_mask  # (B, P + T)
    context, mask, rows = rollout.prompt_ids.shape[1], rollout.response_mask, ids.shape[0]
    chunk = config.micro_batch_size or config.mini_batch_size
    with autocast(ids.device, config.bf16):
        # 3. old log-probs and values. The log-probs come from the same full pass as the reference's (not
        # from the KV-cached rollout), so the KL is exactly 0 before the first update.
        old_logp, entropy = batched_logprobs(
            roles.actor, ids, attention, context, config.temperature, chunk, True
        )
        # The critic is the RM: its head is read through the same normalisation as the scores, so at
        # iteration 0 its values are on the scale of the returns it must predict.
        old_values = normalise(
            torch.cat(
                [
                    response_values(roles.critic, ids[s], attention[s], context)
                    for s in row_slices(rows, chunk)
                ]
            )
        )  # (B, T)
        # 4. scores
        scores, raw_scores = score(roles.reward_model, rollout, normalise, config, chunk)  # (B,), (B,)
        # 5. reference log-probs
        ref_logp, _ = batched_logprobs(roles.reference, ids, attention, context, config.temperature, chunk)
    # 6. per-token rewards: -beta * KL, plus the score on the last response token
    rewards, kl = kl_shaped_rewards(scores, old_logp, ref_logp, mask, kl_coef, config.kl_estimator)  # (B, T)
    if config.whiten_rewards:
        rewards = masked_whiten(rewards, mask, shift_mean=False)
    # 7. advantages (computed once, then frozen for the epochs) and masked whitening
    advantages, returns = gae(rewards, old_values, mask, config.gamma, config.lam)  # (B, T)
    advantages = masked_whiten(advantages, mask)
    experience = Experience(ids, attention, context, mask, old_logp, old_values, advantages, returns)
    kl_per_sequence = kl.sum(1)  # (B,)
    non_score = (-kl_coef * kl).sum(1)  # (B,)
    stats = {
        "objective/scores": scores.mean(),
        "objective/scores_raw": raw_scores.mean(),
        "objective/kl": kl_per_sequence.mean(),
        "objective/non_score_reward": non_score.mean(),
        "objective/rlhf_reward": (scores + non_score).mean(),
        "objective/entropy": masked_mean(entropy, mask),
        "val/explained_variance": explained_variance(old_values, returns, mask),
        "response/length_mean": mask.sum(1).float().mean(),
        "response/stop_rate": rollout.stopped.float().mean(),
        "rollout/logprob_mismatch": ((old_logp - rollout.logprobs).abs() * mask).max(),
    }
    return experience, stats


# ------------------------------------------------------------------------------------------ update


def ptx_sampler(config: PPOConfig, tokenizer: Any, generator: torch.Generator) -> Callable[[], list] | None:
    """Batches of the pretraining/SFT data for the ptx term, or None when the term is off (nothing is drawn,
    so the random stream is the same as without ptx data)."""
    if config.ptx_coef <= 0 or not config.ptx_data:
        return None
    examples = encode_sft(load_records(config.ptx_data, "sft"), tokenizer, 1024, source=config.ptx_data)

    def sample() -> list:
        picks = torch.randint(len(examples), (config.mini_batch_size,), generator=generator).tolist()
        return [examples[i] for i in picks]

    return sample


def micro_batch_loss(
    run: PPORun, exp: Experience, rows: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO loss of the actor and critic on the experience rows `rows` (token means over those rows)."""
    config, mask = run.config, exp.mask[rows]  # (m, T)
    ids, attention = exp.input_ids[rows], exp.attention_mask[rows]  # (m, P + T)
    with autocast(run.device, config.bf16):
        logp, _ = response_logprobs(
            run.roles.actor, ids, attention, exp.context, config.temperature
        )  # (m, T)
        values = run.normalise(response_values(run.roles.critic, ids, attention, exp.context))  # (m, T)
    pg_loss, pg = ppo_policy_loss(logp, exp.old_logp[rows], exp.advantages[rows], mask, config.clip)
    vf_loss, vf = value_loss(values, exp.old_values[rows], exp.returns[rows], mask, config.value_clip)
    ratio_deviation = ((logp.detach() - exp.old_logp[rows]).exp() - 1).abs().masked_fill(~mask, 0).max()
    stats = {
        "loss/policy": pg_loss.detach(),
        "loss/value": vf_loss.detach(),
        "policy/approx_kl": pg["approx_kl"],
        "policy/clipfrac": pg["clipfrac"],
        "policy/ratio_mean": pg["ratio_mean"],
        "val/clipfrac": vf["clipfrac"],
    }
    return pg_loss + config.vf_coef * vf_loss, {**stats, "ratio_deviation": ratio_deviation}


def minibatch_step(run: PPORun, exp: Experience, rows: torch.Tensor) -> dict[str, float]:
    """One optimiser step of actor and critic on a minibatch, accumulated over micro-batches. Each micro-batch
    is weighted by its share of the minibatch's tokens: their sum is the token mean, however split."""
    config, accelerator = run.config, run.accelerator
    tokens = exp.mask[rows].sum()
    stats: dict[str, float] = {"loss/ptx": 0.0}  # stays 0 with the ptx term off
    for part in rows.split(config.micro_batch_size or config.mini_batch_size):
        weight = exp.mask[part].sum() / tokens
        loss, part_stats = micro_batch_loss(run, exp, part)
        accelerator.backward(loss * weight)
        deviation = part_stats.pop("ratio_deviation").item()
        stats["ratio_deviation"] = max(stats.get("ratio_deviation", 0.0), deviation)
        for key, value in part_stats.items():
            stats[key] = stats.get(key, 0.0) + (value * weight).item()
    if run.ptx is not None:
        with autocast(run.device, config.bf16):
            ptx, _ = completion_nll(run.roles.actor, run.ptx(), run.roles.tokenizer.pad_token_id, run.device)
        accelerator.backward(config.ptx_coef * ptx)
        stats["loss/ptx"] = ptx.item()
    # Both models step, or neither: a non-finite loss or gradient norm skips the update (PPO-DETAILS 21).
    norms = [
        float(accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm or float("inf")))
        for model in (run.roles.actor, run.roles.critic)
    ]
    applied = all(
        math.isfinite(x) for x in (*norms, stats["loss/policy"], stats["loss/value"], stats["loss/ptx"])
    )
    for optimizer, scheduler in zip(run.optimizers, run.schedulers, strict=True):
        if applied:
            optimizer.step()
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    run.bad_in_a_row = 0 if applied else run.bad_in_a_row + 1
    run.bad_steps += not applied
    if not applied:
        log.warning("ppo: non-finite loss or gradient norm; update skipped (%d in a row)", run.bad_in_a_row)
        if run.bad_in_a_row >= config.max_bad_steps:
            raise Diverged(f"{run.bad_in_a_row} non-finite updates in a row")
    return {**stats, "skipped": float(not applied)}


def ppo_update(run: PPORun, experience: Experience) -> dict[str, float]:
    """Step 8: `ppo_epochs` passes over shuffled minibatches of `mini_batch_size` episodes; returns the
    mean statistics, and the ratio deviation of the very first minibatch (still the old policy: ~0)."""
    config, rows = run.config, experience.input_ids.shape[0]
    history = []
    for _ in range(config.ppo_epochs):
        order = torch.randperm(rows, generator=run.generator)  # (B,)
        for start in range(0, rows, config.mini_batch_size):
            history.append(minibatch_step(run, experience, order[start : start + config.mini_batch_size]))
    applied = [h for h in history if not h["skipped"]] or history  # a skipped step's numbers are not finite
    means = {
        k: sum(h[k] for h in applied) / len(applied)
        for k in history[0]
        if k not in ("ratio_deviation", "skipped")
    }
    return {**means, "policy/first_ratio_deviation": history[0]["ratio_deviation"]}


# -------------------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(
    roles: Roles,
    prompts: list[list[int]],
    config: PPOConfig,
    normalise: Callable,
    stop_ids: torch.Tensor,
    device: torch.device,
) -> tuple[dict[str, float], list[dict]]:
    """Fixed-seed samples on held-out prompts: mean score, KL to the reference, length; and the samples."""
    generator = torch.Generator(device=device).manual_seed(config.seed)  # the same draws at every evaluation
    settings = SamplingSettings(config.response_length, config.temperature, config.top_k, config.top_p)
    pad_id, chunk = roles.tokenizer.pad_token_id, config.mini_batch_size
    scores, kls, lengths, samples = [], [], [], []
    for start in range(0, len(prompts), chunk):
        ids, mask = (t.to(device) for t in pad(prompts[start : start + chunk], pad_id, side="left"))
        with autocast(device, config.bf16):
            rollout = generate(roles.actor, ids, mask, settings, stop_ids, pad_id, generator)
            full_ids, full_mask, context = rollout.input_ids, rollout.attention_mask, ids.shape[1]
            logp, _ = response_logprobs(roles.actor, full_ids, full_mask, context, config.temperature)
            ref, _ = response_logprobs(roles.reference, full_ids, full_mask, context, config.temperature)
            batch_scores, _ = score(roles.reward_model, rollout, normalise, config, chunk)
        kls.append(sequence_kl(logp, ref, rollout.response_mask))
        scores.append(batch_scores)
        lengths.append(rollout.response_mask.sum(1).float())
        for row in range(ids.shape[0]):
            samples.append(
                {
                    "prompt": roles.tokenizer.decode(ids[row][mask[row].bool()], skip_special_tokens=True),
                    "response": roles.tokenizer.decode(
                        rollout.response_ids[row][rollout.response_mask[row]], skip_special_tokens=True
                    ),
                    "score": batch_scores[row].item(),
                }
            )
    return (
        {
            "eval/score": torch.cat(scores).mean().item(),
            "eval/kl": torch.cat(kls).mean().item(),
            "eval/length": torch.cat(lengths).mean().item(),
        },
        samples,
    )


def save_model(model: Any, tokenizer: Any, target: Path) -> None:
    """save_pretrained into a staging folder renamed into place: never a half-written model folder."""
    staging = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)


# --------------------------------------------------------------------------------------------- run


def split_prompts(config: PPOConfig, tokenizer: Any) -> tuple[list[list[int]], list[list[int]]]:
    prompts = encode_prompts(
        load_records(config.prompts, "prompt"),
        tokenizer,
        config.max_prompt_length,
        config.truncation,
        config.prompts,
    )
    if config.eval_prompts:
        held_out = encode_prompts(
            load_records(config.eval_prompts, "prompt"),
            tokenizer,
            config.max_prompt_length,
            config.truncation,
            config.eval_prompts,
        )
        return prompts, held_out
    n_eval = min(EVAL_PROMPTS, len(prompts) // 4)
    order = torch.randperm(len(prompts), generator=torch.Generator().manual_seed(config.seed)).tolist()
    train, held_out = [prompts[i] for i in order[n_eval:]], [prompts[i] for i in order[:n_eval]]
    if len(train) < config.batch_size:
        raise UsageError(
            f"{config.prompts}: {len(train)} training prompts, fewer than batch_size={config.batch_size}"
        )
    return train, held_out


@dataclass
class PPORun:
    """Everything one PPO run holds between iterations."""

    config: PPOConfig
    roles: Roles
    optimizers: tuple
    schedulers: tuple
    kl_ctl: FixedKLController | AdaptiveKLController
    accelerator: Any
    generator: torch.Generator  # minibatch shuffles and ptx draws
    sampling_generator: torch.Generator  # rollouts
    normalise: Callable[[torch.Tensor], torch.Tensor]
    stop_ids: torch.Tensor
    ptx: Callable[[], list] | None
    bad_steps: int = 0  # optimiser steps skipped for non-finite numbers, in all
    bad_in_a_row: int = 0

    def state(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue exactly as this one would."""
        unwrap = self.accelerator.unwrap_model
        return {
            "actor": unwrap(self.roles.actor).state_dict(),
            "critic": unwrap(self.roles.critic).state_dict(),
            "optimizers": [o.state_dict() for o in self.optimizers],
            "schedulers": [s.state_dict() for s in self.schedulers],
            "kl_coef": self.kl_ctl.value,
            "generator": self.generator.get_state(),
            "sampling_generator": self.sampling_generator.get_state(),
            "bad_steps": self.bad_steps,
        }

    def restore(self, state: dict[str, Any]) -> None:
        unwrap = self.accelerator.unwrap_model
        unwrap(self.roles.actor).load_state_dict(state["actor"])
        unwrap(self.roles.critic).load_state_dict(state["critic"])
        for target, saved in zip(
            (*self.optimizers, *self.schedulers), (*state["optimizers"], *state["schedulers"]), strict=True
        ):
            target.load_state_dict(saved)
        self.kl_ctl.value = state["kl_coef"]
        self.generator.set_state(state["generator"])
        self.sampling_generator.set_state(state["sampling_generator"])
        self.bad_steps = state["bad_steps"]

    @property
    def device(self) -> torch.device:
        return self.accelerator.device


def setup(config: PPOConfig, roles: Roles) -> PPORun:
    """Optimisers (Adam, linear decay to 0), KL controller and random streams around loaded roles."""
    from accelerate import Accelerator

    accelerator = Accelerator()
    # a different random stream per process (PPO-DETAILS 24)
    rank = accelerator.process_index
    updates = config.max_steps * config.ppo_epochs * (config.batch_size // config.mini_batch_size)
    optimizers = tuple(
        torch.optim.AdamW(model.parameters(), lr=lr, eps=config.adam_eps, weight_decay=0.0)
        for model, lr in ((roles.actor, config.actor_lr), (roles.critic, config.critic_lr))
    )
    schedulers = tuple(linear_decay(o, updates) for o in optimizers)
    roles.actor, roles.critic, *optimizers = accelerator.prepare(roles.actor, roles.critic, *optimizers)
    roles.reference.to(accelerator.device)
    roles.reward_model.to(accelerator.device)
    kl_ctl = (
        FixedKLController(config.kl_coef)
        if config.kl_target is None
        else AdaptiveKLController(config.kl_coef, config.kl_target, config.kl_horizon)
    )
    generator = torch.Generator().manual_seed(config.seed + rank)
    return PPORun(
        config,
        roles,
        tuple(optimizers),
        schedulers,
        kl_ctl,
        accelerator,
        generator,
        torch.Generator(device=accelerator.device).manual_seed(config.seed + 1000 + rank),
        reward_normaliser(config),
        stop_token_ids(roles.tokenizer, config.stop_tokens).to(accelerator.device),
        ptx_sampler(config, roles.tokenizer, generator),
    )


def sample(run: PPORun, prompts: list[list[int]]) -> Rollout:
    """Steps 1-2: left-pad the prompts and sample one response each from the actor."""
    config, tokenizer = run.config, run.roles.tokenizer
    ids, mask = (t.to(run.device) for t in pad(prompts, tokenizer.pad_token_id, side="left"))  # (B, P)
    settings = SamplingSettings(config.response_length, config.temperature, config.top_k, config.top_p)
    with autocast(run.device, config.bf16):
        return generate(
            run.accelerator.unwrap_model(run.roles.actor),
            ids,
            mask,
            settings,
            run.stop_ids,
            tokenizer.pad_token_id,
            run.sampling_generator,
        )


def train_iteration(run: PPORun, prompts: list[list[int]]) -> dict[str, float]:
    """Steps 1-9 on one batch of prompts; returns the iteration's metrics."""
    config, roles = run.config, run.roles
    tick = time.perf_counter()
    # 1-2. prompts and rollout
    rollout = sample(run, prompts)
    t_rollout = time.perf_counter()
    # 3-7. old log-probs and values, scores, reference log-probs, rewards, advantages
    kl_coef = run.kl_ctl.value
    experience, stats = make_experience(roles, rollout, kl_coef, run.normalise, config)
    t_score = time.perf_counter()
    # 8. PPO epochs
    train_stats = ppo_update(run, experience)
    run.kl_ctl.update(stats["objective/kl"].item(), config.batch_size)
    t_train = time.perf_counter()
    # 9. metrics
    return {
        **{k: v.item() for k, v in stats.items()},
        **train_stats,
        "kl_coef": kl_coef,
        "lr/actor": run.schedulers[0].get_last_lr()[0],
        "time/rollout": t_rollout - tick,
        "time/score": t_score - t_rollout,
        "time/train": t_train - t_score,
        "episodes_per_s": config.batch_size / (t_train - tick),
    }


def ppo(config: PPOConfig) -> Path:
    """Run PPO; returns the output folder holding `actor/`, `critic/`, metrics.jsonl and samples.jsonl."""
    out = Path(config.out)
    resume_from = check_output(out, config.overwrite, config.resume)
    quiet_transformers()
    set_seed(config.seed)
    roles = load_roles(config)
    prompts, held_out = split_prompts(config, roles.tokenizer)
    run = setup(config, roles)
    batches = prompt_batches(prompts, config.batch_size, config.seed + run.accelerator.process_index)
    begin(out, resume_from)
    first = 0
    if resume_from is not None:
        state = load_checkpoint(resume_from)
        run.restore(state)
        first = state["step"]
        for name in ("metrics.jsonl", "samples.jsonl"):
            truncate_jsonl(out / name, first)
        for _ in range(first):  # the prompt batches already used: a pure function of the seed
            next(batches)

    def checkpoint(step: int) -> Path:
        return save_checkpoint(out, step, run.state(), config.keep_checkpoints)

    mode, record = ("a" if resume_from is not None else "w"), {}
    with (
        MetricsLog(out / "metrics.jsonl", append=resume_from is not None) as metrics,
        (out / "samples.jsonl").open(mode) as samples_file,
        StopSignals() as signals,
        progress(config.max_steps, "ppo", run.accelerator.is_main_process) as bar,
    ):
        bar.update(first)
        for iteration in range(first + 1, config.max_steps + 1):
            try:
                record = {
                    "step": iteration,
                    **train_iteration(run, next(batches)),
                    "bad_steps": run.bad_steps,
                }
            except Diverged as exc:
                # The skipped updates left the models at their last good state, part-way through this
                # iteration; a resume from this checkpoint continues with the next iteration.
                raise Diverged(
                    f"{exc} in iteration {iteration}; the models' last good state is checkpointed in "
                    f"{checkpoint(iteration)}"
                ) from None
            # 10. evaluate and save
            last = iteration == config.max_steps
            if held_out and (last or (config.eval_every and iteration % config.eval_every == 0)):
                eval_stats, samples = evaluate(
                    roles, held_out, config, run.normalise, run.stop_ids, run.device
                )
                record.update(eval_stats)
                # one write: a crash leaves at most one partial line, which a resume drops
                samples_file.write("".join(json.dumps({"step": iteration, **s}) + "\n" for s in samples))
                samples_file.flush()
            metrics.write(record)
            bar.set_postfix(score=f"{record['objective/scores']:.3f}", kl=f"{record['objective/kl']:.3f}")
            bar.update()
            if signals.received or (config.save_every and iteration % config.save_every == 0 and not last):
                path = checkpoint(iteration)
                if signals.received:
                    raise Stopped(signals.received, path)
    save_roles(run, out)
    final = {k: v for k, v in record.items() if k.startswith(("objective/", "eval/"))}
    write_run_file(out, "ppo", config, final=final)
    clear_checkpoints(out)
    return out


def save_roles(run: PPORun, out: Path) -> None:
    """The actor (causal-LM folder) and the critic (sequence-classification folder), with the tokenizer."""
    save_model(run.accelerator.unwrap_model(run.roles.actor), run.roles.tokenizer, out / "actor")
    save_model(run.accelerator.unwrap_model(run.roles.critic), run.roles.tokenizer, out / "critic")
