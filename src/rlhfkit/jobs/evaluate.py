"""`rlhfkit eval`: a model's mean reward (learned RM and/or gold), KL to a reference, length and stop rate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from rlhfkit.config import EvalConfig
from rlhfkit.core import sequence_kl
from rlhfkit.errors import UsageError
from rlhfkit.models import load_causal_lm, load_scalar_model, load_tokenizer, sequence_scores
from rlhfkit.models.forward import response_logprobs
from rlhfkit.rollout import LocalSampler, SamplingSettings, stop_token_ids
from rlhfkit.rollout.completions import ReadingPoints, load_prompts, sample_completions
from rlhfkit.runtime.process import quiet_transformers
from rlhfkit.tasks import load_gold


@torch.no_grad()
def evaluate(config: EvalConfig, gold: Any = None) -> dict[str, Any]:
    """Sample once per prompt (fixed seed) and measure. `gold` may be given as a callable from Python.

    Returns {"metrics": {...}, "samples": [...]}: `reward` (RM score at the last token), `gold`, `kl`
    (mean over samples of sum_t log pi(y_t) - log pi_ref(y_t), at the sampling temperature), `length`,
    `stop_rate`.
    """
    if config.reward_model is None and config.gold is None and gold is None:
        raise UsageError("eval needs --reward-model or --gold (or both)")
    gold = gold or (load_gold(config.gold) if config.gold else None)
    quiet_transformers()
    tokenizer = load_tokenizer(config.model)
    texts, prompt_ids, chat = load_prompts(
        config.prompts, tokenizer, config.max_prompt_length, config.columns
    )
    model = load_causal_lm(config.model, tokenizer).eval()
    reward_model = load_scalar_model(config.reward_model, tokenizer).eval() if config.reward_model else None
    reference = load_causal_lm(config.reference, tokenizer).eval() if config.reference else None
    settings = SamplingSettings(config.response_length, config.temperature)
    generator = torch.Generator().manual_seed(config.seed)
    samples: list[dict[str, Any]] = []
    engine = LocalSampler(model, tokenizer, stop_token_ids(tokenizer))
    # the RM reads a finished response where PPO reads it: at EOS after a text prompt, at the end of turn
    # after a conversation (a special stop replaced by it, a stop string kept and the end appended)
    reading, chat = ReadingPoints.of(tokenizer), [m is not None for m in chat]
    for done in sample_completions(
        engine, tokenizer, texts, prompt_ids, settings, config.batch_size, generator
    ):
        rollout, context = done.rollout, done.rollout.prompt_ids.shape[1]
        ids, mask = rollout.input_ids, rollout.attention_mask  # (b, P + T)
        columns: dict[str, list] = {
            "length": rollout.response_mask.sum(1).tolist(),
            "stopped": rollout.stopped.tolist(),
        }
        if reward_model is not None:
            read = reading.read(ids, mask, rollout.stopped, chat[len(samples) : len(samples) + len(ids)])
            columns["reward"] = sequence_scores(reward_model, *read).tolist()
        if reference is not None:
            logp, _ = response_logprobs(model, ids, mask, context, config.temperature)  # (b, T)
            ref, _ = response_logprobs(reference, ids, mask, context, config.temperature)
            columns["kl"] = sequence_kl(logp, ref, rollout.response_mask).tolist()
        if gold is not None:
            columns["gold"] = [gold(p, r) for p, r in zip(done.prompts, done.responses, strict=True)]
        for i, (prompt, response) in enumerate(zip(done.prompts, done.responses, strict=True)):
            samples.append({"prompt": prompt, "response": response, **{k: v[i] for k, v in columns.items()}})
    metrics = {
        k: sum(float(s[k]) for s in samples) / len(samples)
        for k in ("reward", "gold", "kl", "length", "stopped")
        if k in samples[0]
    }
    metrics["stop_rate"] = metrics.pop("stopped")
    if config.out:
        out = Path(config.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "eval.json").write_text(json.dumps(metrics, indent=2) + "\n")
        (out / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    return {"metrics": metrics, "samples": samples}
