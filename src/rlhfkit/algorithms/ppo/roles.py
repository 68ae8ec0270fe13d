"""The four roles of PPO behind one interface.

Experience and update code ask for what PPO needs — policy log-probs and values (through the trained
`PolicyAndValue` module), reference log-probs and scores (through the `Roles` object) — never for models.
`SeparateModels` is four full models; a LoRA implementation can answer the same questions with two bases and
their adapters switched off, without touching the code that asks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from rlhfkit.config import PPOConfig
from rlhfkit.errors import UsageError
from rlhfkit.models import load_causal_lm, load_scalar_model, load_tokenizer, save_model, sequence_scores
from rlhfkit.models.forward import response_logprobs, response_values
from rlhfkit.models.lora import add_adapter, remove_stale_adapter, save_adapted
from rlhfkit.runtime.distributed import is_main
from rlhfkit.runtime.sharding import model_state, no_split_modules


class PolicyAndValue(torch.nn.Module):
    """Actor and critic as one module: what the optimiser trains and accelerate prepares once (DeepSpeed and
    FSDP take one model per engine). `policy` is a causal LM, `value` a scalar-head model."""

    def __init__(self, policy: Any, value: Any) -> None:
        super().__init__()
        self.policy, self.value = policy, value

    @property
    def _no_split_modules(self) -> list[str]:
        """The transformer-block classes FSDP shards one by one (read by accelerate's auto-wrap policy)."""
        return no_split_modules(self.policy, self.value)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        context: int | None = None,
        temperature: float = 1.0,
        with_entropy: bool = False,
    ) -> Any:
        """(B, P + T) prompt + response -> (B, T) response log-probs at `temperature`, (B, T) raw values of
        the states before each response token, and (B, T) entropies when asked. Without `context`, the
        policy's own output (a causal LM's, with `.logits`): the ptx term's pass, through the same module."""
        if context is None:
            return self.policy(input_ids=input_ids, attention_mask=attention_mask)
        logp, entropy = response_logprobs(
            self.policy, input_ids, attention_mask, context, temperature, with_entropy
        )  # (B, T)
        values = response_values(self.value, input_ids, attention_mask, context)  # (B, T)
        return logp, values, entropy


class Roles(Protocol):
    """What PPO asks of its roles besides the trained module."""

    tokenizer: Any
    trainable: PolicyAndValue

    def reference_logprobs(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, context: int, temperature: float
    ) -> torch.Tensor:
        """(B, T) response log-probs under the frozen reference (the SFT model)."""
        ...

    def scores(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B,) raw reward-model scores, read at each sequence's last real token."""
        ...

    def to(self, device: torch.device) -> None:
        """Move the frozen roles to `device` (the trained module goes through accelerate)."""
        ...


def freeze(model: Any) -> Any:
    """Frozen role: no gradients, eval mode (dropout off), never stepped."""
    model.requires_grad_(False)
    return model.eval()


@dataclass
class SeparateModels:
    """Four full models: actor and reference loaded from the SFT folder, critic and RM from the RM folder."""

    trainable: PolicyAndValue
    reference: Any
    reward_model: Any
    tokenizer: Any

    def reference_logprobs(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, context: int, temperature: float
    ) -> torch.Tensor:
        return response_logprobs(self.reference, input_ids, attention_mask, context, temperature)[0]

    def scores(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return sequence_scores(self.reward_model, input_ids, attention_mask)

    def to(self, device: torch.device) -> None:
        self.reference.to(device)
        self.reward_model.to(device)


@dataclass
class SharedBases:
    """Two bases for four roles (LoRA): the actor is the SFT model plus an adapter and the reference the same
    weights with the adapter off; the critic is the RM plus an adapter and a trainable copy of the head, the
    RM the same weights with the adapter off and the original head. Adapter off is the base bit for bit."""

    trainable: PolicyAndValue  # the bases with their adapters in place
    actor: Any  # the PeftModels around them: what switches an adapter off, and what is saved
    critic: Any
    tokenizer: Any

    def reference_logprobs(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, context: int, temperature: float
    ) -> torch.Tensor:
        with self.actor.disable_adapter():
            return response_logprobs(self.trainable.policy, input_ids, attention_mask, context, temperature)[
                0
            ]

    def scores(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        with self.critic.disable_adapter():
            return sequence_scores(self.trainable.value, input_ids, attention_mask)

    def to(self, device: torch.device) -> None:
        """Nothing: the frozen roles are the trained module's own bases."""


def load_roles(config: PPOConfig) -> SeparateModels | SharedBases:
    """The four roles, dropout off in all of them (docs/ppo-details.md #10): the trained ones stay in eval
    mode through rollout and training, so the ratio on the first minibatch is exactly 1. The weights that are
    not trained (the frozen roles, LoRA's bases) are loaded in `model_dtype`."""
    tokenizer = load_tokenizer(config.policy)
    rm_tokenizer = load_tokenizer(config.reward_model)
    if rm_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise UsageError(
            f"{config.reward_model}: the reward model's tokenizer does not match the policy's "
            f"({config.policy}); train the RM from the SFT model"
        )
    frozen = getattr(torch, config.model_dtype)
    if config.lora.enabled:
        actor = add_adapter(load_causal_lm(config.policy, tokenizer, frozen), config.lora, config.policy)
        critic = add_adapter(
            load_scalar_model(config.reward_model, tokenizer, frozen), config.lora, config.reward_model
        )
        trainable = PolicyAndValue(actor.get_base_model(), critic.get_base_model()).eval()
        return SharedBases(trainable, actor, critic, tokenizer)
    actor = load_causal_lm(config.policy, tokenizer).eval()
    critic = load_scalar_model(config.reward_model, tokenizer).eval()
    reference = freeze(load_causal_lm(config.policy, tokenizer, frozen))
    reward_model = freeze(load_scalar_model(config.reward_model, tokenizer, frozen))
    return SeparateModels(PolicyAndValue(actor, critic).eval(), reference, reward_model, tokenizer)


def save_trained(accelerator: Any, model: Any, roles: Roles, out: Path) -> None:
    """`OUT/actor` (a causal-LM folder) and `OUT/critic` (a sequence-classification folder), each with the
    tokenizer: plain Hugging Face folders every downstream tool loads; with LoRA, adapters merged, and the
    adapters themselves in `OUT/actor-adapter` and `OUT/critic-adapter` (PEFT folders). `model` is the
    prepared `PolicyAndValue`; every process calls (a sharded model's weights are gathered), the main one
    writes."""
    tokenizer = roles.tokenizer
    if isinstance(roles, SharedBases):
        if is_main():
            for adapted, name in ((roles.actor, "actor"), (roles.critic, "critic")):
                save_adapted(adapted, tokenizer, out / name, out / f"{name}-adapter", save_model)
        return
    trainable = accelerator.unwrap_model(model)
    whole = model_state(accelerator, model)  # gathered once when sharded: keys policy.* and value.*
    saved = ((trainable.policy, "policy.", "actor"), (trainable.value, "value.", "critic"))
    for role, prefix, folder in saved:
        if is_main():
            state = {k[len(prefix) :]: v for k, v in whole.items() if k.startswith(prefix)}
            save_model(role, tokenizer, out / folder, state_dict=state)
            remove_stale_adapter(out / f"{folder}-adapter")
