"""Stage 3: PPO. One iteration, as the numbered steps of the method, each a call into this package or
`rlhfkit.core`:

  1. prompts   2. rollout   3. old log-probs and values   4. scores   5. reference log-probs
  6. KL-shaped rewards   7. GAE + advantage whitening   8. PPO epochs   9. metrics   10. evaluation

The run loop (`rlhfkit.runtime.loop`) drives the iterations: checkpoints, resume, stops, metrics.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rlhfkit.algorithms.ppo.evaluate import episode_monitors, evaluate_policy
from rlhfkit.algorithms.ppo.experience import Experience, make_experience
from rlhfkit.algorithms.ppo.prompts import PromptSet, split_prompts
from rlhfkit.algorithms.ppo.rewards import (
    Episodes,
    Rewards,
    critic_scale,
    load_rewards,
    reward_normaliser,
    with_rows,
)
from rlhfkit.algorithms.ppo.rewards import describe as describe_rewards
from rlhfkit.algorithms.ppo.rewards.mixture import check_function
from rlhfkit.algorithms.ppo.roles import (
    Roles,
    check_roles_packing,
    critic_source,
    critic_starts_from_rm,
    load_roles,
    save_trained,
)
from rlhfkit.algorithms.ppo.update import Optimisation, ppo_update, ptx_sampler
from rlhfkit.config import PPOConfig
from rlhfkit.core import AdaptiveKLController, FixedKLController
from rlhfkit.data.order import batch_indices
from rlhfkit.errors import StepFailed, UsageError
from rlhfkit.rollout import LocalSampler, Rollout, RolloutEngine, SamplingSettings, stop_token_ids, widen
from rlhfkit.rollout.environments import EpisodeRunner, check_environment, load_environment
from rlhfkit.runtime.card import run_card, write_card
from rlhfkit.runtime.distributed import all_max, all_rows, barrier, is_main, local_rows, world
from rlhfkit.runtime.loop import UpdateGuard, run_loop
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
from rlhfkit.tasks.scorers import (
    FunctionScorer,
    ModelScorer,
    Scorer,
    load_monitors,
    monitor_means,
    untouched_random_state,
)


def trained(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


@dataclass
class PPOTrainer:
    """A PPO run between iterations; the run loop's trainer."""

    config: PPOConfig
    roles: Roles
    opt: Optimisation
    engine: RolloutEngine
    kl_ctl: FixedKLController | AdaptiveKLController
    sampling_generator: torch.Generator  # rollouts
    prompts: PromptSet  # the run's prompt rows; training and held-out indices into them
    rewards: Rewards
    monitors: list[Scorer] = field(default_factory=list)  # measured on the samples, never optimised
    episodes: EpisodeRunner | None = None  # multi-turn: the environment around the engine

    @classmethod
    def create(cls, config: PPOConfig) -> PPOTrainer:
        """Roles loaded, prompts read, optimiser and random streams set: ready for iteration 1."""

        quiet_transformers()
        check_trackers(config.report_to)
        monitors = load_monitors(config)  # before the seed is set: loading a model may draw
        for name in ("batch_size", "mini_batch_size"):  # global sizes: every process takes its share
            if getattr(config, name) % world():
                raise UsageError(
                    f"{name} ({getattr(config, name)}) must be divisible by the {world()} processes"
                )
        set_seed(config.seed)
        roles = load_roles(config)
        if config.padding_free:  # before the output folder is touched: a bad model is one line
            check_roles_packing(roles)
        prompts = split_prompts(config, roles.tokenizer)
        rewards = load_rewards(config, roles, prompts, reward_normaliser(config))
        environment = load_environment(config.environment) if config.environment else None
        if environment is not None:
            first = prompts.train[0]
            check_environment(environment, prompts.columns[first], prompts.records[first], roles.tokenizer)
        with untouched_random_state():  # checked on an empty response, as the reward functions are
            for monitor in monitors:
                if isinstance(monitor, FunctionScorer):
                    check_function(monitor.function, prompts, roles.tokenizer, monitor.concurrency)
        # the ptx pass leaves the critic without gradients: DDP must be told to expect that
        accelerator = make_accelerator(config.report_to, config.out, unused_parameters=config.ptx_coef > 0)
        updates = config.max_steps * config.ppo_epochs * (config.batch_size // config.mini_batch_size)
        policy, value = roles.trainable.policy, roles.trainable.value
        optimizer = adamw(
            roles.trainable,
            [  # the trained parameters only: with LoRA, the adapters and the critic's head
                {"params": trained(policy), "lr": config.actor_lr},
                *([] if value is None else [{"params": trained(value), "lr": config.critic_lr}]),
            ],
            accelerator,
            eps=config.adam_eps,
            weight_decay=0.0,
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1.0 - step / updates))
        model, optimizer = accelerator.prepare(roles.trainable, optimizer)
        start(accelerator, model)
        roles.to(accelerator.device)
        for monitor in monitors:
            if isinstance(monitor, ModelScorer):
                monitor.to(accelerator.device)
        # Every process draws the same streams: episodes depend on their global index, not on the processes.
        generator = torch.Generator().manual_seed(config.seed)
        opt = Optimisation(
            model,
            optimizer,
            scheduler,
            accelerator,
            generator,
            critic_scale(rewards.normalise, rewards.weights, critic_starts_from_rm(config, roles)),
            ptx_sampler(config, roles.tokenizer, generator),
            roles.tokenizer.pad_token_id,
        )
        stop_ids = stop_token_ids(roles.tokenizer, config.stop_tokens)
        engine = LocalSampler(
            accelerator.unwrap_model(model).policy,
            roles.tokenizer,
            stop_ids,
            config.bf16,
            config.decoder,
            is_sharded(accelerator),
        )
        kl_ctl = (
            FixedKLController(config.kl_coef)
            if config.kl_target is None
            else AdaptiveKLController(config.kl_coef, config.kl_target, config.kl_horizon)
        )
        sampling = torch.Generator(device=accelerator.device).manual_seed(config.seed + 1000)
        episodes = None
        if environment is not None:
            episodes = EpisodeRunner(
                engine,
                roles.tokenizer,
                environment,
                stop_ids.to(accelerator.device),
                config.max_turns,
                config.max_episode_length,
                config.max_prompt_length,
                config.reward_concurrency,
            )
        return cls(config, roles, opt, engine, kl_ctl, sampling, prompts, rewards, monitors, episodes)

    def prompt_batch(self, step: int) -> list[int]:
        """1. The global batch of iteration `step` as prompt indices (into `prompts`), each
        `samples_per_prompt` times in a row: reshuffled every pass over the training prompts; a pure function
        of the seed and the step."""
        config, k, train = self.config, self.config.samples_per_prompt, self.prompts.train
        _, indices = batch_indices(len(train), config.batch_size // k, config.seed, step - 1, drop_last=True)
        return [train[i] for i in indices for _ in range(k)]  # a prompt's k samples side by side

    def rollout(self, batch: list[int]) -> Episodes:
        """2. One sampled response per prompt index of the global batch from the current policy: each process
        samples its rows with their share of one stream of noise, then every process gets the whole batch,
        each episode with its prompt's index."""
        prompts = [self.prompts.ids[i] for i in batch]
        config, rows = self.config, local_rows(len(prompts))
        settings = SamplingSettings(config.response_length, config.temperature, config.top_k, config.top_p)
        device = self.opt.accelerator.device
        turns = config.max_turns if self.episodes else 1
        noise = torch.rand(
            turns, config.response_length, len(prompts), generator=self.sampling_generator, device=device
        )  # (turns, T_max, B) for the whole batch, whichever rows this process samples
        # every process pads its prompts to the global batch's width, as one process would
        width = max(map(len, prompts))
        with self.whole_parameters():
            if self.episodes is None:
                rollout = self.engine.generate(prompts[rows], settings, noise=noise[0][:, rows], width=width)
            else:
                rollout = self.episodes.run(
                    prompts[rows],
                    [self.prompts.columns[i] for i in batch[rows]],
                    [self.prompts.records[i] for i in batch[rows]],
                    settings,
                    noise[:, :, rows],
                    everywhere=True,
                )
        if world() > 1:
            size = torch.tensor(rollout.prompt_ids.shape[1:] + rollout.response_ids.shape[1:], device=device)
            width, length = all_max(size).tolist()  # an environment's openings may be wider than the prompts
            mine = widen(rollout, width, length, self.roles.tokenizer.pad_token_id)
            rollout = Rollout(
                *(
                    None if (v := getattr(mine, f.name)) is None else all_rows(v)
                    for f in dataclasses.fields(Rollout)
                )
            )
        return with_rows(rollout, batch)

    def experience(self, rollout: Episodes) -> tuple[Experience, dict[str, torch.Tensor]]:
        """3-7. Old log-probs and values, scores, reference log-probs, rewards, advantages; with
        `monitor_training`, the monitors' means on the batch (`monitor/train/<name>`: in the stats only)."""
        model = self.opt.accelerator.unwrap_model(self.opt.model)  # no gradients: no DDP hooks either
        with self.whole_parameters():
            experience, stats = make_experience(
                model,
                self.roles,
                rollout,
                self.kl_ctl.value,
                self.opt.critic_scale,
                self.config,
                self.rewards,
            )
        return experience, stats | self.training_monitors(rollout)

    def training_monitors(self, rollout: Episodes) -> dict[str, torch.Tensor]:
        """{`monitor/train/<name>`: mean} on the whole batch with `monitor_training` (else nothing). Every
        process holds the whole batch and computes the same values: no process waits on another's monitor,
        and one failing anywhere stops them all together (StepFailed)."""
        if not (self.config.monitor_training and self.monitors):
            return {}
        tokenizer = self.roles.tokenizer
        values = episode_monitors(self.monitors, rollout, self.prompts, tokenizer, everywhere=True)
        means = monitor_means(values, prefix="monitor/train/")
        return {name: torch.tensor(mean, dtype=torch.float64) for name, mean in means.items()}

    def update(self, experience: Experience, guard: UpdateGuard) -> dict[str, float]:
        """8. The PPO epochs; then the engine's weights are brought up to date."""
        stats = ppo_update(self.opt, experience, self.kl_ctl.value, self.config, guard)
        self.engine.sync_weights()
        return stats

    def step(self, step: int, guard: UpdateGuard) -> dict[str, Any]:
        """Steps 1-9 of iteration `step`; returns its metrics."""
        tick = time.perf_counter()
        before = self.sampling_generator.get_state()
        try:
            rollout = self.rollout(self.prompt_batch(step))  # 1-2
            t_rollout = time.perf_counter()
            experience, stats = self.experience(rollout)  # 3-7
        except StepFailed:  # an environment or reward function failed: back to the state after the last step
            self.sampling_generator.set_state(before)
            raise
        kl_coef = self.kl_ctl.value
        t_score = time.perf_counter()
        train_stats = self.update(experience, guard)  # 8
        kl = stats["objective/kl"].item()
        if math.isfinite(kl):  # a NaN would poison an adaptive beta for good
            self.kl_ctl.update(kl, self.config.batch_size)
        t_train = time.perf_counter()
        return {  # 9
            **{k: v.item() for k, v in stats.items()},
            **train_stats,
            "kl_coef": kl_coef,
            "lr/actor": self.opt.scheduler.get_last_lr()[0],
            "time/rollout": t_rollout - tick,
            "time/score": t_score - t_rollout,
            "time/train": t_train - t_score,
            "episodes_per_s": self.config.batch_size / (t_train - tick),
        }

    def evaluate(self, step: int) -> tuple[dict[str, Any], list[dict]] | None:
        """10. Held-out samples and their metrics (None when nothing is held out)."""
        if not self.prompts.held_out:
            return None
        with self.whole_parameters():  # every process gathers; the main one evaluates alone (it alone writes)
            if not is_main():
                return None
            policy = self.opt.accelerator.unwrap_model(self.opt.model).policy
            held_out = self.prompts.held_out
            return evaluate_policy(
                self.engine,
                self.roles,
                policy,
                held_out,
                self.config,
                self.rewards,
                self.monitors,
                self.episodes,
            )

    def whole_parameters(self) -> Any:
        """Generation and scoring with the trained module's parameters gathered once when it is sharded
        (`rlhfkit.runtime.sharding`); nothing otherwise."""
        return whole_parameters(self.opt.accelerator, self.opt.model)

    def layout(self) -> dict[str, Any]:
        """What a checkpoint of this run holds (`rlhfkit.runtime.sharding.checkpoint_layout`)."""
        critic = self.roles.trainable.value is not None
        return checkpoint_layout(self.opt.accelerator, self.config.lora, critic)

    def state(self) -> dict[str, Any]:
        return {
            "layout": self.layout(),
            "model": model_state(self.opt.accelerator, self.opt.model, trained_only=self.config.lora.enabled),
            "optimizer": optimizer_state(self.opt.accelerator, self.opt.model, self.opt.optimizer),
            "scheduler": self.opt.scheduler.state_dict(),
            "kl_coef": self.kl_ctl.value,
            "generator": self.opt.generator.get_state(),
            "sampling_generator": self.sampling_generator.get_state(),
        }

    def restore(self, state: dict[str, Any]) -> None:
        accelerator, model = self.opt.accelerator, self.opt.model
        check_layout(state.get("layout"), self.layout())
        load_model_state(accelerator, model, state["model"], trained_only=self.config.lora.enabled)
        load_optimizer_state(accelerator, model, self.opt.optimizer, state["optimizer"])
        self.opt.scheduler.load_state_dict(state["scheduler"])
        self.kl_ctl.value = state["kl_coef"]
        self.opt.generator.set_state(state["generator"])
        self.sampling_generator.set_state(state["sampling_generator"])
        self.engine.sync_weights()

    def postfix(self, record: dict[str, Any]) -> dict[str, str]:
        return {"score": f"{record['objective/scores']:.3f}", "kl": f"{record['objective/kl']:.3f}"}


def ppo(config: PPOConfig) -> Path:
    """Run PPO; returns the output folder holding `actor/`, `critic/`, metrics.jsonl and samples.jsonl."""
    out = Path(config.out)
    resume_from = check_output(out, config.overwrite, config.resume)
    trainer = PPOTrainer.create(config)
    begin(out, resume_from)
    trackers = Trackers(trainer.opt.accelerator, "rlhfkit-ppo", config)
    try:
        record = run_loop(
            trainer, out, config, config.max_steps, "ppo", resume_from, unit="iteration", trackers=trackers
        )
    finally:
        trackers.finish()
    saved = save_trained(trainer.opt.accelerator, trainer.opt.model, trainer.roles, out)
    if is_main():
        final = {k: v for k, v in record.items() if k.startswith(("objective/", "eval/", "monitor/"))}
        write_model_cards(config, trainer.roles, saved, final)
        write_run_file(
            out,
            "ppo",
            config,
            final=final,
            launch=launch(trainer.opt.accelerator),
            rewards=describe_rewards(trainer.rewards),
        )
        clear_checkpoints(out)
    barrier()
    return out


def write_model_cards(
    config: PPOConfig, roles: Roles, saved: list[tuple[Path, str, bool]], final: dict[str, Any]
) -> None:
    """A model card (README.md) in each folder `save_trained` wrote, with the run's final numbers: the actor
    started from the policy, the critic from where `critic_source` says."""
    shares = roles.has_reward_model and roles.rm_tokenizer is None
    starts = {"actor": config.policy, "critic": critic_source(config, shares)}
    run = Path(config.out).resolve().name
    for folder, role, adapter in saved:
        card = run_card("ppo", config, final, starts[role], "causal-lm" if role == "actor" else "scalar")
        write_card(folder, dataclasses.replace(card, adapter=adapter), f"{run}/{folder.name}")
