"""Online DPO (Guo et al. 2024): every step samples `samples_per_prompt` responses per prompt from the
current policy, scores them with `ppo`'s reward components, pairs the best and the worst of each prompt and
takes one DPO step on those pairs against the starting policy.

Everything but the update is a PPO run's: a critic-free `ppo` config (`DPOConfig.ppo_config`) gives the
roles (the reference: a frozen copy, or with LoRA the base with its adapter off), the prompts, the rewards,
the rollout on N processes and the held-out evaluation; this file holds the one step that differs.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rlhfkit.algorithms.dpo.loss import PAIR_METRICS, named, pair_loss
from rlhfkit.algorithms.ppo.experience import Experience
from rlhfkit.algorithms.ppo.rewards import describe as describe_rewards
from rlhfkit.algorithms.ppo.roles import save_trained
from rlhfkit.algorithms.ppo.trainer import PPOTrainer
from rlhfkit.algorithms.supervised import TokenBudget, make_scheduler, micro_batches, token_budget
from rlhfkit.config.dpo import DPOConfig
from rlhfkit.core import best_and_worst
from rlhfkit.errors import StepFailed
from rlhfkit.runtime.card import run_card, write_card
from rlhfkit.runtime.distributed import all_sum, barrier, is_main, world
from rlhfkit.runtime.loop import UpdateGuard, guarded_update, run_loop
from rlhfkit.runtime.outputs import begin, check_output, clear_checkpoints, write_run_file
from rlhfkit.runtime.process import autocast
from rlhfkit.runtime.sharding import launch
from rlhfkit.runtime.trackers import Trackers

# PPO's objective statistics that mean nothing without a KL penalty in the reward
UNUSED = ("objective/non_score_reward", "objective/rlhf_reward", "policy/uniform_groups")


def pairs_loss(
    opt: Any, exp: Experience, chosen: torch.Tensor, rejected: torch.Tensor, config: DPOConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean DPO loss and metric sums of the pairs (chosen[i], rejected[i]) of experience rows: the policy's
    log-probs (at the sampling temperature, as every log-prob of the run) with their gradient, the
    reference's from the experience."""
    rows = torch.cat([chosen, rejected])  # (2p,)
    mask = exp.mask[rows]  # (2p, T)
    with autocast(exp.input_ids.device, config.bf16):
        logp, _, _ = opt.model(
            exp.input_ids[rows],
            exp.attention_mask[rows],
            exp.context,
            config.temperature,
            packed=config.padding_free,
        )  # (2p, T), 0 at the responses' padding when packed
    sums = (logp.float() * mask).sum(1)  # (2p,)
    ref = (exp.ref_logp[rows] * mask).sum(1)  # (2p,)
    counts, p = mask.sum(1), len(chosen)
    reference = None if config.loss_type == "simpo" else (ref[:p], ref[p:])
    return pair_loss((sums[:p], sums[p:]), reference, (counts[:p], counts[p:]), config)


def pair_budget(exp: Experience, config: DPOConfig) -> TokenBudget | None:
    """The token budget of pairs of experience rows (chosen, rejected): a packed pass computes their real
    tokens, a padded one their whole width (the experience's rows are one rectangle)."""
    lengths = exp.attention_mask.sum(1).tolist() if config.padding_free else None  # (B,)
    width = exp.input_ids.shape[1]
    return token_budget(config, lambda pair: [width if lengths is None else lengths[i] for i in pair])


def dpo_step(opt: Any, exp: Experience, config: DPOConfig, guard: UpdateGuard) -> dict[str, float]:
    """One optimiser step on the best-and-worst pairs of the batch; no step when every group is a tie."""
    chosen, rejected = best_and_worst(exp.scores, config.samples_per_prompt)  # (P,), (P,)
    groups = exp.scores.shape[0] // config.samples_per_prompt
    stats = {"pairs": float(len(chosen)), "pairs/ties": 1 - len(chosen) / groups}
    if len(chosen) == 0:  # nothing preferred: a step would still move the weights (momentum)
        return stats
    pairs = list(zip(chosen.tolist(), rejected.tolist(), strict=True))
    sums = torch.zeros(len(PAIR_METRICS), dtype=torch.float64)
    for part, weight in micro_batches(pairs, config.grad_accum, pair_budget(exp, config)):
        c, r = (torch.tensor([p[i] for p in part], device=exp.scores.device) for i in (0, 1))
        loss, part_sums = pairs_loss(opt, exp, c, r, config)
        # each micro-batch weighted by its share of the batch's pairs (times N: DDP averages the gradients)
        opt.accelerator.backward(loss * len(part) / len(pairs) * world() * weight)
        sums += part_sums.cpu() * weight
    metrics = named(all_sum(sums), len(pairs), config.nll_coef > 0)
    policy = opt.accelerator.unwrap_model(opt.model).policy
    (grad_norm,), applied = guarded_update(
        opt.optimizer, opt.scheduler, opt.accelerator, [policy.parameters()], config.optim.max_grad_norm,
        [metrics["loss"]], guard,
    )  # fmt: skip
    return {**stats, **metrics, "grad_norm": grad_norm, "skipped": float(not applied)}


@dataclass
class OnlineDPO:
    """An online DPO run between steps: the run loop's trainer, on a PPO run's roles, rollout and rewards."""

    config: DPOConfig
    ppo: PPOTrainer

    def step(self, step: int, guard: UpdateGuard) -> dict[str, Any]:
        """Sample, score (with the reference's log-probs and the KL to it), pair, and take one DPO step."""
        ppo, tick = self.ppo, time.perf_counter()
        before = ppo.sampling_generator.get_state()
        rollout = ppo.rollout(ppo.prompt_batch(step))
        try:
            experience, stats = ppo.experience(rollout)
        except StepFailed:  # a reward function failed: back to the state after the last step
            ppo.sampling_generator.set_state(before)
            raise
        t_sample = time.perf_counter()
        update = dpo_step(ppo.opt, experience, self.config, guard)
        ppo.engine.sync_weights()
        return {
            **{k: v.item() for k, v in stats.items() if k not in UNUSED},
            **update,
            "lr": ppo.opt.scheduler.get_last_lr()[0],
            "time/sample_and_score": t_sample - tick,
            "time/train": time.perf_counter() - t_sample,
        }

    def evaluate(self, step: int) -> tuple[dict[str, Any], list[dict]] | None:
        return self.ppo.evaluate(step)

    def state(self) -> dict[str, Any]:
        return self.ppo.state()

    def restore(self, state: dict[str, Any]) -> None:
        self.ppo.restore(state)

    def postfix(self, record: dict[str, Any]) -> dict[str, str]:
        return {"score": f"{record['objective/scores']:.3f}", "kl": f"{record['objective/kl']:.3f}"}


def online_steps(config: DPOConfig, train_prompts: int) -> int:
    """`max_steps`, or `epochs` passes over the training prompts, `batch_size / samples_per_prompt` a step
    (a pass's last partial batch is not sampled)."""
    per_step = config.batch_size // config.samples_per_prompt
    return config.max_steps or config.epochs * max(1, train_prompts // per_step)  # whole batches, as sampled


def online_dpo(config: DPOConfig) -> Path:
    """Online DPO from `config.model` on `config.prompts`; returns the output folder (a causal-LM folder)."""
    out = Path(config.out)
    resume_from = check_output(out, config.overwrite, config.resume)
    ppo = PPOTrainer.create(config.ppo_config())
    steps = online_steps(config, len(ppo.prompts.train))
    opt = ppo.opt
    for group in opt.optimizer.param_groups:  # the optimiser of `optim`, not ppo's
        group["weight_decay"] = config.optim.weight_decay
    opt.scheduler = make_scheduler(opt.optimizer, config.optim, steps)
    trainer = OnlineDPO(config, ppo)
    begin(out, resume_from)
    trackers = Trackers(opt.accelerator, "rlhfkit-dpo", config)
    try:
        record = run_loop(trainer, out, config, steps, "dpo", resume_from, trackers=trackers)
    finally:
        trackers.finish()
    saved = save_trained(opt.accelerator, opt.model, ppo.roles, out, folders={"actor": (".", "adapter")})
    if is_main():
        final = {
            k: v
            for k, v in record.items()
            if k.startswith(("objective/", "eval/", "rewards/", "loss", "monitor/"))
        }
        for folder, _, adapter in saved:  # the policy's folder, and its adapter's with LoRA
            card = run_card("dpo", config, final, config.model, "causal-lm")
            write_card(folder, dataclasses.replace(card, adapter=adapter))
        write_run_file(
            out,
            "dpo",
            config,
            final=final,
            launch=launch(opt.accelerator),
            rewards=describe_rewards(ppo.rewards),
        )
        clear_checkpoints(out)
    barrier()
    return out
