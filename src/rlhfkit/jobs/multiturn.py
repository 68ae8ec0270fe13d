"""`rlhfkit demo-multiturn`: a multi-turn task learnt with PPO from an environment's rewards, measured by the
task's gold (the success rate of guess my number, `rlhfkit.tasks.guess`).

1. the game's rows and demonstrations, a tokenizer trained on their text and a tiny Llama  2. SFT on a weak
player's turns  3. the SFT model plays the held-out games  4. PPO with `environment` = the game, no reward
model  5. the trained actor plays the same games  6. summary.json (success rate, environment reward, turns
per episode and KL to the SFT model, before and after)

The evaluations play whole episodes through PPO's own episode runner (`rlhfkit.rollout.environments`), so
the games are built exactly as PPO's rollout builds them; every game is written to `eval_sft.jsonl` and
`eval_ppo.jsonl`.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from rlhfkit.config import to_dict
from rlhfkit.config.multiturn import MultiturnConfig
from rlhfkit.jobs.demo import demo_folders, write_jsonl
from rlhfkit.runtime.metrics import read_metrics
from rlhfkit.runtime.outputs import write_run_file
from rlhfkit.tasks import guess

ENVIRONMENT = "rlhfkit.tasks.guess:GuessingGame"
STAGES = 6


def say(step: int, text: str) -> None:
    print(f"[{step}/{STAGES}] {text}", flush=True)


def play(model: Any, tokenizer: Any, rows: list[dict], settings: Any, seed: int) -> tuple[list, Any]:
    """(games, rollout): every row's game played to its end by `model` through PPO's own episode runner
    (`rlhfkit.rollout.environments`), all live episodes of a turn sampled as one batch. `settings` (a
    PPOConfig) gives `max_turns`, `max_episode_length`, `max_prompt_length`, `response_length`,
    `temperature` and `stop_tokens`."""
    from rlhfkit.data.encode import prompt_ids
    from rlhfkit.rollout.engine import LocalSampler, stop_token_ids
    from rlhfkit.rollout.environments import Environment, EpisodeRunner
    from rlhfkit.rollout.sampling import SamplingSettings

    games: list[guess.GuessingGame] = []

    def make(row: dict) -> guess.GuessingGame:  # keeps each episode's game for the gold
        games.append(guess.GuessingGame(row))
        return games[-1]

    stops = stop_token_ids(tokenizer, settings.stop_tokens)
    sampler = LocalSampler(model, tokenizer, stops, decoder="eager")
    runner = EpisodeRunner(
        sampler,
        tokenizer,
        Environment(ENVIRONMENT, make),
        stops.to(sampler.device),
        settings.max_turns,
        settings.max_episode_length,
        settings.max_prompt_length,
    )
    prompts = [prompt_ids(tokenizer, r["prompt"])[-settings.max_prompt_length :] for r in rows]
    sampling = SamplingSettings(max_new_tokens=settings.response_length, temperature=settings.temperature)
    generator = torch.Generator(device=sampler.device).manual_seed(seed)
    with torch.no_grad():
        rollout = runner.run(prompts, rows, rows, sampling, None, False, generator)
    return games, rollout


def sequences(rollout: Any) -> tuple[list[list[int]], list[list[bool]]]:
    """Each episode's ids unpadded (opening, then the region after it) and, per id, whether the policy
    sampled it."""
    ids, policy = [], []
    for b in range(rollout.prompt_ids.shape[0]):
        opening = rollout.prompt_ids[b][rollout.prompt_mask[b].bool()].tolist()
        region = rollout.response_mask[b]  # (T,)
        ids.append(opening + rollout.response_ids[b][region].tolist())
        policy.append([False] * len(opening) + rollout.policy_mask[b][region].tolist())
    return ids, policy


@torch.no_grad()
def policy_logprobs(
    model: Any, ids: list[list[int]], policy: list[list[bool]], pad_id: int, temperature: float
) -> torch.Tensor:
    """(E,) each episode's summed log-probability of its policy tokens under `model` at `temperature`
    (right-padded: every token after the first is a "response" token of `response_logprobs`)."""
    from rlhfkit.data import pad
    from rlhfkit.models.forward import response_logprobs

    device = next(model.parameters()).device
    tokens, mask = (t.to(device) for t in pad(ids, pad_id, "right"))  # (E, L)
    sampled, _ = pad(policy, 0, "right")  # (E, L)
    logp, _ = response_logprobs(model, tokens, mask, 1, temperature)  # (E, L-1) tokens 1 .. L-1
    return (logp * sampled[:, 1:].to(device)).sum(dim=1)  # (E,)


def measure(games: list[guess.GuessingGame], rollout: Any, kl: float) -> dict[str, Any]:
    """The gold of played episodes (`guess.gold`), their KL to the SFT model, their mean length in tokens
    and how they ended (`episode_stats`, as PPO logs them)."""
    from rlhfkit.rollout.environments import episode_stats

    stats = episode_stats(rollout, prefix="")
    return {
        **asdict(guess.gold(games)),
        "kl_to_sft": kl,
        "length": float(stats["length"]),
        **{name: float(v) for name, v in stats.items() if name.startswith("ended_")},
    }


def evaluate_games(
    model_dir: str, reference_dir: str, rows: list[dict], config: MultiturnConfig
) -> tuple[dict[str, Any], list[dict]]:
    """(metrics, samples): the model of `model_dir` plays `rows` as PPO samples (`config.ppo`); its KL to
    the SFT model `reference_dir` (k1 summed over an episode's policy tokens, averaged over episodes; 0 for
    the SFT model itself)."""
    from rlhfkit.models import load_causal_lm, load_tokenizer
    from rlhfkit.rollout.environments import ENDINGS

    tokenizer = load_tokenizer(model_dir)
    model = load_causal_lm(model_dir, tokenizer).eval()
    games, rollout = play(model, tokenizer, rows, config.ppo, config.seed + 1)
    ids, policy = sequences(rollout)
    kl = 0.0
    if model_dir != reference_dir:
        reference = load_causal_lm(reference_dir, tokenizer).eval()
        pad_id, temperature = tokenizer.pad_token_id, config.ppo.temperature
        logp = policy_logprobs(model, ids, policy, pad_id, temperature)  # (E,)
        kl = float((logp - policy_logprobs(reference, ids, policy, pad_id, temperature)).mean())
    samples = [
        {
            "secret": game.secret,
            "episode": tokenizer.decode(episode),
            "found": game.found,
            "turns": game.turns,
            "rewards": game.rewards,
            "ended": ENDINGS[int(rollout.ended[b])],
        }
        for b, (game, episode) in enumerate(zip(games, ids, strict=True))
    ]
    return measure(games, rollout, kl), samples


def evaluated(
    name: str, model_dir: str, sft_dir: str, rows: list[dict], config: MultiturnConfig
) -> dict[str, Any]:
    """`evaluate_games` of the model `name`, its games written to `eval_<name>.jsonl` and its success
    printed."""
    metrics, samples = evaluate_games(model_dir, sft_dir, rows, config)
    write_jsonl(Path(config.out) / f"eval_{name}.jsonl", samples)
    print(
        f"      {name.upper()}: success {metrics['success']:.1%}, {metrics['turns']:.2f} turns and "
        f"{metrics['ruled_out']:.2f} ruled-out guesses per game",
        flush=True,
    )
    return metrics


def base_model(config: MultiturnConfig, texts: list[str], folder: Path) -> str:
    """Step 1: a tokenizer trained on the game's text and a tiny Llama."""
    from rlhfkit.models import tiny_llama, train_tokenizer

    tokenizer = train_tokenizer(texts, vocab_size=config.vocab_size)
    model = tiny_llama(tokenizer, config.hidden_size, config.num_layers, config.num_heads, seed=config.seed)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def task_files(config: MultiturnConfig, data: Path) -> tuple[str, str, str, list[str]]:
    """(SFT file, PPO prompts, held-out prompts, the texts the tokenizer learns from): demonstrations, PPO's
    and the evaluation's games, each from its own seed."""
    demos = guess.demonstrations(config.episodes, config.seed, config.skill, high=config.high)
    prompts = guess.game_rows(config.prompts, config.seed + 1, config.high)
    held_out = guess.game_rows(config.eval_episodes, config.seed + 2, config.high)
    texts = [d["prompt"] + d["completion"] for d in demos]
    return (
        write_jsonl(data / "sft.jsonl", demos),
        write_jsonl(data / "prompts.jsonl", prompts),
        write_jsonl(data / "eval_prompts.jsonl", held_out),
        texts,
    )


def demo_multiturn(config: MultiturnConfig) -> Path:
    """Run every stage into `config.out`; returns the folder holding summary.json."""
    from rlhfkit.algorithms.ppo import ppo
    from rlhfkit.algorithms.sft import sft

    out, data = demo_folders(config.out, config.overwrite)
    started = time.perf_counter()
    common: dict[str, Any] = dict(seed=config.seed, overwrite=True, bf16=config.bf16)

    say(1, "the game's data, a tokenizer and a tiny model")
    sft_data, prompts, eval_prompts, texts = task_files(config, data)
    base = base_model(config, texts, out / "base")

    say(2, "SFT on the weak player's turns")
    sft_config = replace(config.sft, model=base, data=sft_data, out=str(out / "sft"), **common)
    sft_dir = str(sft(sft_config))

    held_out = [json.loads(line) for line in Path(eval_prompts).read_text().splitlines()]  # as PPO reads them
    say(3, f"the SFT model plays {len(held_out)} held-out games")
    before = evaluated("sft", sft_dir, sft_dir, held_out, config)

    say(4, "PPO against the environment (no reward model)")
    ppo_config = replace(
        config.ppo,
        policy=sft_dir,
        prompts=prompts,
        eval_prompts=eval_prompts,
        environment=ENVIRONMENT,
        out=str(out / "ppo"),
        **common,
    )
    tick = time.perf_counter()
    actor = str(ppo(ppo_config) / "actor")
    ppo_seconds = time.perf_counter() - tick

    say(5, "the trained actor plays the same games")
    after = evaluated("ppo", actor, sft_dir, held_out, config)

    say(6, "summary.json")
    summary = summarise(before, after, read_metrics(out / "ppo" / "metrics.jsonl"), ppo_seconds)
    summary["wall_seconds"] = time.perf_counter() - started
    summary["config"] = {"demo": to_dict(config), "sft": to_dict(sft_config), "ppo": to_dict(ppo_config)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_run_file(out, "demo-multiturn", config, summary={k: v for k, v in summary.items() if k != "config"})
    return out


def summarise(
    before: dict[str, Any], after: dict[str, Any], metrics: list[dict], ppo_seconds: float
) -> dict[str, Any]:
    """summary.json's numbers: the held-out gold of the SFT model and of the trained actor, and PPO's own
    held-out evaluations along training (its metrics' `eval/...` values, by step)."""
    return {
        "task": ENVIRONMENT,
        "success_sft": before["success"],
        "success_ppo": after["success"],
        "success_gain": after["success"] - before["success"],
        "env_reward_sft": before["env_reward"],
        "env_reward_ppo": after["env_reward"],
        "turns_sft": before["turns"],
        "turns_ppo": after["turns"],
        "kl_to_sft": after["kl_to_sft"],
        "sft": before,
        "ppo": after,
        "ppo_train_seconds": ppo_seconds,
        "ppo_evaluations": [
            {"step": m["step"], **{k: v for k, v in m.items() if k.startswith("eval/")}}
            for m in metrics
            if any(k.startswith("eval/") for k in m)
        ],
    }
