"""Offline DPO's sampling evaluation: with `eval_prompts`, every evaluation also samples the policy on those
prompts (the same random draws each time, so two evaluations differ only by the policy) and measures the
samples: their KL to the reference, length, stop rate, and the monitors' scores. Offline DPO never samples to
train; this is how its gold, proxy and KL are followed along training, as `ppo`'s are."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from rlhfkit.algorithms.ppo.rewards.functions import agreed
from rlhfkit.config.dpo import DPOConfig
from rlhfkit.core import sequence_kl
from rlhfkit.data import read_rows
from rlhfkit.models.forward import response_logprobs
from rlhfkit.rollout import LocalSampler, SamplingSettings, stop_token_ids
from rlhfkit.rollout.completions import load_prompts, sample_completions
from rlhfkit.runtime.process import autocast
from rlhfkit.tasks.scorers import Scorer, monitor_scores

# (B, P + T) ids, mask, context P, temperature -> (B, T) the reference's log-probs of the responses
ReferenceLogprobs = Callable[[torch.Tensor, torch.Tensor, int, float], torch.Tensor]


@dataclass
class HeldOutSampler:
    """The held-out prompts and what measures their samples."""

    config: DPOConfig
    tokenizer: Any
    texts: list[str]
    ids: list[list[int]]
    messages: list[list[dict] | None]  # a conversation's messages (the monitors' RMs render them), or None
    rows: list[dict]  # the prompts' data rows: the columns monitor functions may read
    reference: ReferenceLogprobs
    monitors: list[Scorer]

    @staticmethod
    def prompts(config: DPOConfig, tokenizer: Any) -> tuple[list, list, list, list[dict]]:
        """The held-out prompts' texts, ids, messages and data rows: read (and validated) before anything
        is written, by every process."""
        texts, ids, messages = load_prompts(
            config.eval_prompts, tokenizer, config.max_prompt_length, config.columns
        )
        return texts, ids, messages, [dict(row.data) for row in read_rows(config.eval_prompts)]

    @torch.no_grad()
    def __call__(self, policy: Any) -> tuple[dict[str, float], list[dict]]:
        """`eval/kl` (k1 summed per response, at the sampling temperature), `eval/length`,
        `eval/stop_rate`, `monitor/<name>` (means over the samples), and the samples."""
        config, device = self.config, next(policy.parameters()).device
        stop = stop_token_ids(self.tokenizer, config.stop_tokens)
        engine = LocalSampler(policy, self.tokenizer, stop, config.bf16, config.decoder)
        settings = SamplingSettings(config.response_length, config.temperature, config.top_k, config.top_p)
        generator = torch.Generator(device=device).manual_seed(config.seed)
        samples: list[dict] = []
        for done in sample_completions(
            engine, self.tokenizer, self.texts, self.ids, settings, config.batch_size, generator
        ):
            rollout, context = done.rollout, done.rollout.prompt_ids.shape[1]
            ids, mask = rollout.input_ids, rollout.attention_mask  # (b, P + T)
            with autocast(device, config.bf16):
                logp, _ = response_logprobs(policy, ids, mask, context, config.temperature)  # (b, T)
                ref = self.reference(ids, mask, context, config.temperature)  # (b, T)
            kl = sequence_kl(logp, ref, rollout.response_mask).tolist()  # (b,)
            part = slice(len(samples), len(samples) + len(kl))

            def user(part: slice = part, done: Any = done) -> dict[str, list[float]]:
                return monitor_scores(
                    self.monitors, done.prompts, done.responses, self.rows[part],
                    messages=self.messages[part], finished=done.rollout.stopped.tolist(),
                )  # fmt: skip

            # a failing monitor function stops the run as in `ppo` (StepFailed: a checkpoint, status 1)
            scores = agreed(user, device, everywhere=False)
            for i, (prompt, response) in enumerate(zip(done.prompts, done.responses, strict=True)):
                sample = {"prompt": prompt, "response": response, "kl": kl[i]}
                sample |= {"length": int(rollout.response_mask[i].sum()), "stopped": bool(rollout.stopped[i])}
                samples.append(sample | {name: values[i] for name, values in scores.items()})
        names = ["kl", "length", "stopped", *(k for k in samples[0] if k.startswith("monitor/"))]
        means = {name: sum(float(s[name]) for s in samples) / len(samples) for name in names}
        metrics = {"eval/kl": means.pop("kl"), "eval/length": means.pop("length")}
        return metrics | {"eval/stop_rate": means.pop("stopped")} | means, samples
