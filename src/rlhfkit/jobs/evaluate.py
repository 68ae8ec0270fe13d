"""`rlhfkit eval`: a model's mean reward (learned RM, reward functions and/or gold), KL to a reference, length
and stop rate; with `best_of` N, of best-of-N sampling: N samples per prompt, the one the proxy scores highest
kept (Stiennon et al. 2020; Gao et al. 2022), measured by gold: a function or a reward-model folder
(`rlhfkit.tasks.scorers`)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rlhfkit.algorithms.ppo.rewards.mixture import component_names
from rlhfkit.algorithms.ppo.rewards.scale import RM
from rlhfkit.config import EvalConfig
from rlhfkit.core import best_of_n_kl, sequence_kl
from rlhfkit.data import read_rows
from rlhfkit.errors import StepFailed, UsageError
from rlhfkit.models import load_causal_lm, load_scalar_model, load_tokenizer, sequence_scores
from rlhfkit.models.forward import response_logprobs
from rlhfkit.rollout import LocalSampler, SamplingSettings, stop_token_ids
from rlhfkit.rollout.completions import (
    Completions,
    ReadingPoints,
    load_prompts,
    response_texts,
    sample_completions,
)
from rlhfkit.rollout.environments import (
    ENDINGS,
    EpisodeRunner,
    check_environment,
    episode_turns,
    load_environment,
)
from rlhfkit.runtime.metrics import progress
from rlhfkit.runtime.process import quiet_transformers
from rlhfkit.tasks.rewards import (
    RewardFunction,
    RewardFunctionError,
    call_reward_function,
    load_reward_function,
)
from rlhfkit.tasks.scorers import Scorer, callable_scorer, load_scorer

Gold = Callable[[str, str], float]


def best_rows(scores: list[float], n: int) -> list[int]:
    """The index of the highest score in each run of `n` consecutive scores (a prompt's candidates; the
    first of them on a tie). len(scores) is a multiple of n -> len(scores) // n indices."""
    return [start + max(range(n), key=lambda j: scores[start + j]) for start in range(0, len(scores), n)]


def repeated(items: list, n: int) -> list:
    """Each item `n` times in a row: rows n·i ... n·i + n - 1 are item i's."""
    return [item for item in items for _ in range(n)]


@dataclass
class Proxy:
    """The reward best-of-N selects by: the weighted sum of the reward model's raw score (read where PPO
    reads it) and the reward functions' values (on the response without its stop token, as PPO's see it)."""

    reward_model: Any | None
    functions: dict[str, RewardFunction]  # component name -> function
    weights: dict[str, float]  # component name -> weight, every component
    reading: ReadingPoints
    concurrency: int

    def components(self, done: Completions, chat: list[bool], rows: list[dict]) -> dict[str, list[float]]:
        """{name: one raw score per row of the batch} of every component, the RM's first."""
        scores: dict[str, list[float]] = {}
        if self.reward_model is not None:
            rollout = done.rollout
            read = self.reading.read(rollout.input_ids, rollout.attention_mask, rollout.stopped, chat)
            scores[RM] = sequence_scores(self.reward_model, *read).tolist()
        for name, function in self.functions.items():
            try:
                scores[name] = call_reward_function(
                    function, done.prompts, done.responses, self.concurrency, rows
                )
            except RewardFunctionError as exc:
                raise UsageError(str(exc)) from None
        return scores

    def total(self, components: dict[str, list[float]]) -> list[float]:
        """The weighted sum of `components`, one value per row."""
        columns = [[self.weights[name] * v for v in values] for name, values in components.items()]
        return [sum(row) for row in zip(*columns, strict=True)]


def load_proxy(config: EvalConfig, tokenizer: Any, rows: list[dict]) -> Proxy | None:
    """The configured proxy (None without an RM or reward functions); a function that cannot be imported
    or takes a column the prompt rows lack is a UsageError before anything is sampled."""
    functions = [load_reward_function(spec) for spec in config.reward_functions]
    if not functions and config.reward_model is None:
        return None
    for function in functions:
        try:
            function.check_columns(rows)
        except RewardFunctionError as exc:
            raise UsageError(str(exc)) from None
    names = component_names(config.reward_model is not None, functions)
    weights = dict(zip(names, list(config.reward_weights) or [1.0] * len(names), strict=True))
    model = load_scalar_model(config.reward_model, tokenizer).eval() if config.reward_model else None
    named = dict(zip(names[len(names) - len(functions) :], functions, strict=True))
    return Proxy(model, named, weights, ReadingPoints.of(tokenizer), config.reward_concurrency)


def kept_kl(
    model: Any, reference: Any, done: Completions, kept: list[int], temperature: float
) -> list[float]:
    """sum_t log pi(y_t) - log pi_ref(y_t) of each kept row: the log-ratio of the sampling policy, not the
    KL of the best-of-N policy (see `best_of_n_kl`)."""
    rollout, context = done.rollout, done.rollout.prompt_ids.shape[1]
    ids, mask = rollout.input_ids[kept], rollout.attention_mask[kept]  # (k, P + T)
    logp, _ = response_logprobs(model, ids, mask, context, temperature)  # (k, T)
    ref, _ = response_logprobs(reference, ids, mask, context, temperature)  # (k, T)
    return sequence_kl(logp, ref, rollout.loss_mask[kept]).tolist()  # the policy's tokens


@dataclass
class Scorers:
    """What measures a batch: the proxy, the reference for the KL, gold; and the evaluated model."""

    model: Any
    proxy: Proxy | None
    reference: Any | None
    gold: Scorer | None
    temperature: float


def gold_scores(
    gold: Scorer, done: Completions, kept: list[int], messages: list, rows: list[dict]
) -> list[float]:
    """Gold's score of each kept row, in one batched call (`messages`, `rows`: each row's conversation or
    None, and data row); a function that fails is a UsageError."""
    try:
        return gold.score(
            [done.prompts[k] for k in kept],
            [done.responses[k] for k in kept],
            [rows[k] for k in kept],
            messages=[messages[k] for k in kept],
            finished=done.rollout.stopped[kept].tolist(),
        )
    except RewardFunctionError as exc:
        raise UsageError(str(exc)) from None


def batch_samples(
    done: Completions, n: int, scorers: Scorers, messages: list, rows: list[dict]
) -> list[dict[str, Any]]:
    """One sample per prompt of the batch (its rows in runs of `n` candidates): the candidate the proxy
    scores highest, with its length, whether it stopped, proxy reward (and components), KL and gold.
    `messages`: each row's conversation, None for a text prompt."""
    rollout, proxy = done.rollout, scorers.proxy
    chat = [m is not None for m in messages]
    components = proxy.components(done, chat, rows) if proxy else {}
    total = proxy.total(components) if proxy else []
    kept = best_rows(total, n) if n > 1 else list(range(len(done.responses)))
    columns: dict[str, list] = {
        "length": rollout.loss_mask[kept].sum(1).tolist(),  # the policy's tokens
        "stopped": rollout.stopped[kept].tolist(),
    }
    if rollout.turn_rewards is not None:  # a multi-turn episode: the environment's reward, its turns
        columns["env_reward"] = rollout.turn_rewards[kept].sum(1).tolist()
        columns["policy_turns"] = rollout.turns[kept].tolist()
        columns["ended"] = [ENDINGS[int(e)] for e in rollout.ended[kept]]
    if proxy is not None:
        columns["reward"] = [total[k] for k in kept]
        if len(components) > 1:  # one component is `reward` itself
            columns |= {f"reward/{name}": [v[k] for k in kept] for name, v in components.items()}
    if scorers.reference is not None:
        columns["kl"] = kept_kl(scorers.model, scorers.reference, done, kept, scorers.temperature)
    if scorers.gold is not None:
        columns["gold"] = gold_scores(scorers.gold, done, kept, messages, rows)
    samples = []
    for i, k in enumerate(kept):
        sample = {"prompt": done.prompts[k], "response": done.responses[k]}
        sample |= {name: values[i] for name, values in columns.items()}
        if done.turns is not None:  # the episode turn by turn, the environment's marked
            sample["turns"] = done.turns[k]
        if n > 1:  # the prompt's candidates and their proxy rewards, the kept one among them
            group = range(k - (k % n), k - (k % n) + n)
            sample["candidates"] = [{"response": done.responses[j], "reward": total[j]} for j in group]
        samples.append(sample)
    return samples


def episode_runner(config: EvalConfig, engine: LocalSampler, tokenizer: Any, row: dict, record: dict) -> Any:
    """PPO's episode runner around `engine` for `config.environment`, checked on the first prompt (`row`,
    `record`) before anything is sampled or written: a bad environment is a UsageError."""
    environment = load_environment(config.environment)
    check_environment(environment, row, record, tokenizer)
    return EpisodeRunner(
        engine, tokenizer, environment, engine.stop_ids, config.max_turns, config.max_episode_length,
        config.max_prompt_length, config.reward_concurrency,
    )  # fmt: skip


def episode_completions(
    runner: EpisodeRunner, prompts: tuple, settings: SamplingSettings, batch: int, generator: torch.Generator
) -> Iterator[Completions]:
    """Batches of whole episodes played by the model (the same context, endings and rewards as PPO's), as
    completions whose response is the episode after its opening. `prompts`: (texts, ids, records, data
    rows). An environment failing mid-way is a UsageError."""
    texts, ids, records, rows = prompts
    stops = set(runner.stop_ids.tolist())
    for start in range(0, len(ids), batch):
        part = slice(start, start + batch)
        try:
            rollout = runner.run(ids[part], rows[part], records[part], settings, None, False, generator)
        except StepFailed as exc:
            raise UsageError(str(exc)) from None
        turns = [episode_turns(runner.tokenizer, rollout, row, stops) for row in range(len(rollout.stopped))]
        yield Completions(texts[part], response_texts(runner.tokenizer, rollout), rollout, turns)


def summary(samples: list[dict[str, Any]], n: int) -> dict[str, Any]:
    """Means over the kept samples; with n > 1, `best_of` and the analytic `kl_best_of_n` too."""
    names = [k for k in samples[0] if k.startswith("reward/")]
    metrics: dict[str, Any] = {
        k: sum(float(s[k]) for s in samples) / len(samples)
        for k in ("reward", *names, "gold", "kl", "length", "stopped", "env_reward", "policy_turns")
        if k in samples[0]
    }
    metrics["stop_rate"] = metrics.pop("stopped")
    if "policy_turns" in metrics:  # multi-turn: turns per episode, and how the episodes ended
        metrics["turns"] = metrics.pop("policy_turns")
        metrics |= {f"ended_{how}": sum(s["ended"] == how for s in samples) / len(samples) for how in ENDINGS}
    if n > 1:  # `best_of` 1 writes exactly what eval always wrote
        metrics |= {"best_of": n, "kl_best_of_n": best_of_n_kl(n)}
    return metrics


@torch.no_grad()
def evaluate(config: EvalConfig, gold: Gold | Scorer | None = None) -> dict[str, Any]:
    """Sample `best_of` responses per prompt (fixed seed), keep the proxy's favourite, and measure it. `gold`
    may be given from Python, as a callable `(prompt, response) -> float` or a `Scorer`; `config.gold` is
    `module:function` or a reward-model folder.

    Returns {"metrics": {...}, "samples": [...]}: `reward` (the proxy: the RM's score at the last token,
    plus the reward functions', weighted), `gold`, `kl` (mean over kept samples of sum_t log pi(y_t) -
    log pi_ref(y_t), at the sampling temperature), `length`, `stop_rate`; with best_of > 1, `best_of` and
    `kl_best_of_n` (log N - (N - 1)/N).
    """
    measures = (config.reward_model, config.reward_functions, config.gold, gold, config.environment)
    if not any(m for m in measures if m is not None):
        raise UsageError("eval needs --reward-model, --reward-function, --gold or --environment")
    if gold is not None and not isinstance(gold, Scorer):
        gold = callable_scorer(gold)
    gold = gold or (load_scorer(config.gold, "gold", config.reward_concurrency) if config.gold else None)
    quiet_transformers()
    tokenizer = load_tokenizer(config.model)
    texts, prompt_ids, messages = load_prompts(
        config.prompts, tokenizer, config.max_prompt_length, config.columns
    )
    # the rows as the data has them: the columns reward functions may read
    needs_rows = config.reward_functions or config.environment
    rows = [dict(r.data) for r in read_rows(config.prompts)] if needs_rows else []
    rows = rows or [{}] * len(texts)
    proxy = load_proxy(config, tokenizer, rows)
    model = load_causal_lm(config.model, tokenizer).eval()
    reference = load_causal_lm(config.reference, tokenizer).eval() if config.reference else None
    scorers = Scorers(model, proxy, reference, gold, config.temperature)
    n, settings = config.best_of, SamplingSettings(config.response_length, config.temperature)
    generator = torch.Generator().manual_seed(config.seed)
    engine = LocalSampler(model, tokenizer, stop_token_ids(tokenizer))
    # each prompt n times in a row, `batch_size` prompts (n·batch_size rows) at once: a batch holds whole
    # groups of candidates, and n = 1 samples exactly as eval always did
    texts, prompt_ids = repeated(texts, n), repeated(prompt_ids, n)
    messages, rows = repeated(messages, n), repeated(rows, n)
    batch, samples = config.batch_size * n, []
    if config.environment:  # best_of is 1 (checked): every prompt once
        records = [
            {"prompt": t} if m is None else {"messages": m} for t, m in zip(texts, messages, strict=True)
        ]
        runner = episode_runner(config, engine, tokenizer, rows[0], records[0])
        prompts = (texts, prompt_ids, records, rows)
        batches = episode_completions(runner, prompts, settings, batch, generator)
    else:
        batches = sample_completions(engine, tokenizer, texts, prompt_ids, settings, batch, generator)
    with progress(math.ceil(len(prompt_ids) / batch), "eval") as bar:
        for done in batches:
            first = len(samples) * n
            part = slice(first, first + len(done.responses))
            samples += batch_samples(done, n, scorers, messages[part], rows[part])
            bar.update()
    metrics = summary(samples, n)
    if config.out:
        out = Path(config.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "eval.json").write_text(json.dumps(metrics, indent=2) + "\n")
        (out / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    return {"metrics": metrics, "samples": samples}
