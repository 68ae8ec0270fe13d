"""The rollout engine interface and its first implementation, the in-process KV-cached sampler.

An engine takes unpadded prompts (token lists) and sampling settings and returns a `Rollout`; padding happens
inside. After each optimiser update the trainer calls `sync_weights()` so an engine that holds its own copy
of the policy (a server, a compiled graph) can bring it up to date.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from rlhfkit.data import pad
from rlhfkit.data.encode import end_of_turn
from rlhfkit.rollout.decoding import choose_decoder, make_decoder
from rlhfkit.rollout.sampling import Rollout, SamplingSettings, generate
from rlhfkit.runtime.process import autocast


class RolloutEngine(Protocol):
    def generate(
        self,
        prompts: list[list[int]],
        settings: SamplingSettings,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
        width: int | None = None,
    ) -> Rollout:
        """One sampled response per prompt; prompts left-padded (to `width` when given), responses cut after
        the first stop token. `noise` ((max_new_tokens, len(prompts)) uniforms), when given, decides the
        draws instead of `generator`."""
        ...

    def sync_weights(self) -> None:
        """Bring the engine's policy weights up to date with the trainer's (after an update)."""
        ...


class LocalSampler:
    """Samples from the trainer's own policy module in this process (no copy of the weights), with the KV
    cache, on the model's device, in bf16 autocast when asked. `decoder` names how the forward passes run
    (`rlhfkit.rollout.decoding`); one decoder serves every batch: its caches and compiled step are reused."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        stop_ids: torch.Tensor,
        bf16: bool = False,
        decoder: str = "auto",
        sharded: bool = False,
    ) -> None:
        self.model, self.pad_id, self.bf16 = model, tokenizer.pad_token_id, bf16
        self.device = next(model.parameters()).device
        self.stop_ids = stop_ids.to(self.device)
        self.decoder = make_decoder(model, choose_decoder(decoder, self.device, sharded, model.config))

    def generate(
        self,
        prompts: list[list[int]],
        settings: SamplingSettings,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
        width: int | None = None,
    ) -> Rollout:
        ids, mask = (t.to(self.device) for t in pad(prompts, self.pad_id, "left", width))  # (B, P)
        with autocast(self.device, self.bf16):
            return generate(
                self.model, ids, mask, settings, self.stop_ids, self.pad_id, generator, noise, self.decoder
            )

    def sync_weights(self) -> None:
        """Nothing to do: the sampler reads the trained module's parameters directly."""


def stop_token_ids(tokenizer: Any, stop_tokens: tuple[str, ...] = ()) -> torch.Tensor:
    """(S,) EOS, the chat template's end of turn when it is another token (`<|im_end|>`, `<|eot_id|>`: a
    conversation's turn ends there, and `rm` read its pairs there, so PPO, `label` and `eval` stop there too,
    never running past the turn), plus each extra stop string, which must be a single token."""
    from rlhfkit.errors import UsageError

    ids = [tokenizer.eos_token_id, end_of_turn(tokenizer)]
    for text in stop_tokens:
        encoded = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(encoded) != 1:
            raise UsageError(
                f"stop token {text!r} is {len(encoded)} tokens for this tokenizer; it must be one"
            )
        ids.append(encoded[0])
    return torch.tensor(sorted(set(ids)))
