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
from rlhfkit.data.encode import end_of_turn
from rlhfkit.errors import UsageError
from rlhfkit.models import load_causal_lm, load_scalar_model, load_tokenizer, save_model, sequence_scores
from rlhfkit.models.forward import response_logprobs, response_values
from rlhfkit.models.lora import add_adapter, remove_stale_adapter, save_adapted, unsharded_twin
from rlhfkit.models.packing import check_packing
from rlhfkit.models.precision import compute_in, round_like
from rlhfkit.runtime.distributed import is_main
from rlhfkit.runtime.sharding import is_sharded, model_state, no_split_modules


class PolicyAndValue(torch.nn.Module):
    """Actor and critic as one module: what the optimiser trains and accelerate prepares once (DeepSpeed and
    FSDP take one model per engine). `policy` is a causal LM, `value` a scalar-head model, or None for the
    critic-free estimators (GRPO, RLOO, REINFORCE++), whose forward then returns no values."""

    def __init__(self, policy: Any, value: Any | None) -> None:
        super().__init__()
        self.policy, self.value = policy, value

    @property
    def _no_split_modules(self) -> list[str]:
        """The transformer-block classes FSDP shards one by one (read by accelerate's auto-wrap policy)."""
        return no_split_modules(self.policy, self.value)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        context: int | None = None,
        temperature: float = 1.0,
        with_entropy: bool = False,
        packed: bool = False,
        **policy_kwargs: Any,
    ) -> Any:
        """(B, P + T) prompt + response -> (B, T) response log-probs at `temperature`, (B, T) raw values of
        the states before each response token (None without a critic), and (B, T) entropies when asked;
        `packed`: each from one padding-free pass (`models.packing`). Without `context`, the policy's own
        output (a causal LM's, with `.logits`; `policy_kwargs` such as a packed pass's `position_ids` go to
        it): the ptx term's pass, through the same module."""
        if context is None:
            return self.policy(input_ids=input_ids, attention_mask=attention_mask, **policy_kwargs)
        logp, entropy = response_logprobs(
            self.policy, input_ids, attention_mask, context, temperature, with_entropy, packed=packed
        )  # (B, T)
        values = (
            None
            if self.value is None
            else response_values(self.value, input_ids, attention_mask, context, packed)
        )  # (B, T)
        return logp, values, entropy


class Roles(Protocol):
    """What PPO asks of its roles besides the trained module."""

    tokenizer: Any
    trainable: PolicyAndValue
    rm_tokenizer: Any | None  # the reward model's own tokenizer when it differs from the policy's
    rm_max_length: int | None  # then, the most tokens it reads (its position embeddings)

    @property
    def has_reward_model(self) -> bool:
        """Whether a reward model scores (reward functions may score alone)."""
        ...

    def reference_logprobs(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        context: int,
        temperature: float,
        packed: bool = False,
    ) -> torch.Tensor:
        """(B, T) response log-probs under the frozen reference (the SFT model); `packed`: from one
        padding-free pass."""
        ...

    def scores(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, packed: bool = False
    ) -> torch.Tensor:
        """(B,) raw reward-model scores, read at each sequence's last real token; the ids are in the RM's
        tokens (`rm_tokenizer`'s when it is set). `packed`: from one padding-free pass."""
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
    """Full models: actor and reference loaded from the SFT folder; the critic (for GAE) from the RM folder,
    `critic_model`, or the policy with a new head; the RM (when given) frozen."""

    trainable: PolicyAndValue
    reference: Any
    reward_model: Any | None
    tokenizer: Any
    rm_tokenizer: Any | None = None
    rm_max_length: int | None = None  # the RM's positions, when it reads its own tokens

    @property
    def has_reward_model(self) -> bool:
        return self.reward_model is not None

    def reference_logprobs(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        context: int,
        temperature: float,
        packed: bool = False,
    ) -> torch.Tensor:
        return response_logprobs(
            self.reference, input_ids, attention_mask, context, temperature, packed=packed
        )[0]

    def scores(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, packed: bool = False
    ) -> torch.Tensor:
        return sequence_scores(self.reward_model, input_ids, attention_mask, packed)

    def to(self, device: torch.device) -> None:
        self.reference.to(device)
        if self.reward_model is not None:
            self.reward_model.to(device)


@dataclass
class SharedBases:
    """Two bases for four roles (LoRA): the actor is the SFT model plus an adapter and the reference the same
    weights with the adapter off; the critic is the RM plus an adapter and a trainable copy of the head, the
    RM the same weights with the adapter off and the original head. Adapter off is the base bit for bit.
    Without a critic (critic-free estimators), or when the critic does not start from the RM, the RM is a
    frozen model of its own (`reward_model`)."""

    trainable: PolicyAndValue  # the bases with their adapters in place
    actor: Any  # the PeftModels around them: what switches an adapter off, and what is saved
    critic: Any | None
    tokenizer: Any
    reward_model: Any | None = None  # a separate frozen RM; None = the critic's base (or no RM)
    rm_tokenizer: Any | None = None
    rm_max_length: int | None = None
    rm_in_critic: bool = True

    @property
    def has_reward_model(self) -> bool:
        return self.rm_in_critic or self.reward_model is not None

    def reference_logprobs(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        context: int,
        temperature: float,
        packed: bool = False,
    ) -> torch.Tensor:
        with self.actor.disable_adapter():
            logp, _ = response_logprobs(
                self.trainable.policy, input_ids, attention_mask, context, temperature, packed=packed
            )  # (B, T)
            return logp

    def scores(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, packed: bool = False
    ) -> torch.Tensor:
        if not self.rm_in_critic:
            return sequence_scores(self.reward_model, input_ids, attention_mask, packed)
        with self.critic.disable_adapter():
            return sequence_scores(self.trainable.value, input_ids, attention_mask, packed)

    def to(self, device: torch.device) -> None:
        """The separate RM, if any: the other frozen roles are the trained module's own bases."""
        if self.reward_model is not None:
            self.reward_model.to(device)


def check_roles_packing(roles: Roles) -> None:
    """`padding_free`: refuse in one line a role whose attention would mix packed sequences (each model
    once: with LoRA, the bases behind the adapters, which also serve the reference and the RM)."""
    models = {
        "the policy": roles.trainable.policy,
        "the critic": roles.trainable.value,
        "the reference": getattr(roles, "reference", None),
        "the reward model": getattr(roles, "reward_model", None),
    }
    for name, model in models.items():
        if model is not None:
            check_packing(model, name)


def same_tokens(a: Any, b: Any) -> bool:
    """Whether two tokenizers turn the same conversation into the same ids and close a response with the same
    token: same vocabulary, same template, same EOS and end of turn (an RM that reads the policy's ids is read
    at the policy's ends)."""
    return (
        a.get_vocab() == b.get_vocab()
        and getattr(a, "chat_template", None) == getattr(b, "chat_template", None)
        and a.eos_token_id == b.eos_token_id
        and end_of_turn(a) == end_of_turn(b)
    )


def critic_starts_from_rm(config: PPOConfig, roles: Roles) -> bool:
    """Whether the critic is the RM at iteration 0 (so its head reads on the RM's scale)."""
    shares = roles.has_reward_model and roles.rm_tokenizer is None
    return roles.trainable.value is not None and critic_source(config, shares) == config.reward_model


def critic_source(config: PPOConfig, rm_shares_tokens: bool) -> str | None:
    """Where the critic starts: `critic_model`, else the RM (which knows what a good response is) when it
    reads the policy's tokens, else the policy with a new scalar head; None without GAE (no critic)."""
    if config.advantage_estimator != "gae":
        return None
    return config.critic_model or (config.reward_model if rm_shares_tokens else config.policy)


def load_roles(config: PPOConfig) -> SeparateModels | SharedBases:
    """The roles, dropout off in all of them (docs/ppo-details.md #10): the trained ones stay in eval mode
    through rollout and training, so the ratio on the first minibatch is exactly 1. The weights that are not
    trained (the frozen roles, LoRA's bases) are loaded in `model_dtype`. A reward model whose tokenizer (or
    chat template) differs from the policy's keeps its own and scores re-encoded text."""
    tokenizer = load_tokenizer(config.policy)
    rm_tokenizer = load_tokenizer(config.reward_model) if config.reward_model else None
    shares = rm_tokenizer is not None and same_tokens(rm_tokenizer, tokenizer)
    own_tokens = None if shares or rm_tokenizer is None else rm_tokenizer
    source = critic_source(config, shares)
    if config.critic_model and not same_tokens(load_tokenizer(config.critic_model), tokenizer):
        raise UsageError(
            f"critic_model {config.critic_model}: its tokenizer does not match the policy's "
            f"({config.policy}); the critic reads the policy's tokens"
        )
    frozen = getattr(torch, config.model_dtype)

    def frozen_rm() -> Any:
        return freeze(load_scalar_model(config.reward_model, rm_tokenizer, frozen)) if rm_tokenizer else None

    def positions(model: Any) -> int | None:
        return getattr(model.config, "max_position_embeddings", None) if own_tokens is not None else None

    if config.lora.enabled:
        actor = add_adapter(load_causal_lm(config.policy, tokenizer, frozen), config.lora, config.policy)
        critic = None
        if source is not None:
            critic = add_adapter(load_scalar_model(source, tokenizer, frozen), config.lora, source)
        rm_in_critic = critic is not None and source == config.reward_model
        trainable = PolicyAndValue(actor.get_base_model(), critic and critic.get_base_model()).eval()
        separate = None if rm_in_critic else frozen_rm()
        limit = positions(separate) if separate is not None else None
        return SharedBases(trainable, actor, critic, tokenizer, separate, own_tokens, limit, rm_in_critic)
    # Frozen twins stored in `model_dtype` compute in fp32, and the trained copies start from the same
    # rounded weights: the KL is 0 and the critic is the RM before the first update (models/precision.py).
    actor = round_like(load_causal_lm(config.policy, tokenizer).eval(), frozen)
    critic = load_scalar_model(source, tokenizer).eval() if source is not None else None
    if critic is not None and source == config.reward_model:
        round_like(critic, frozen)
    reference = compute_in(freeze(load_causal_lm(config.policy, tokenizer, frozen)), torch.float32)
    reward_model = frozen_rm()
    if reward_model is not None:
        compute_in(reward_model, torch.float32)
    limit = positions(reward_model) if reward_model is not None else None
    return SeparateModels(
        PolicyAndValue(actor, critic).eval(), reference, reward_model, tokenizer, own_tokens, limit
    )


# each trained role's merged folder and adapter folder, inside the output folder (`ppo`'s layout)
PPO_FOLDERS = {"actor": ("actor", "actor-adapter"), "critic": ("critic", "critic-adapter")}


def save_trained(
    accelerator: Any, model: Any, roles: Roles, out: Path, folders: dict[str, tuple[str, str]] = PPO_FOLDERS
) -> list[tuple[Path, str, bool]]:
    """`OUT/actor` (a causal-LM folder) and, with a critic, `OUT/critic` (a sequence-classification folder),
    each with the tokenizer: plain Hugging Face folders every downstream tool loads; with LoRA, adapters
    merged, and the adapters themselves in `OUT/actor-adapter` and `OUT/critic-adapter` (PEFT folders).
    `model` is the prepared `PolicyAndValue`; every process calls (a sharded model's weights are gathered),
    the main one writes. Returns the folders, each with its role (`actor`, `critic`) and whether it is an
    adapter folder (the same list in every process): what their model cards describe. `folders` places them
    elsewhere (online DPO: the actor at `OUT` itself, its adapter at `OUT/adapter`)."""
    tokenizer, trainable = roles.tokenizer, accelerator.unwrap_model(model)
    sharded, written = is_sharded(accelerator), []
    adapted = {"actor": roles.actor, "critic": roles.critic} if isinstance(roles, SharedBases) else {}
    for role, name in ((trainable.policy, "actor"), (trainable.value, "critic")):
        if role is None:
            continue
        merged, adapter = (out / f for f in folders[name])
        # one role at a time: sharded, each is gathered whole onto the main process's CPU, then freed
        state = model_state(accelerator, model, part=role) if sharded or not adapted else None
        if is_main() and adapted:  # LoRA: a sharded model is saved through an unsharded twin
            twin = adapted[name] if state is None else unsharded_twin(adapted[name], state)
            save_adapted(twin, tokenizer, merged, adapter, save_model)
        elif is_main():
            save_model(role, tokenizer, merged, state_dict=state)
            remove_stale_adapter(adapter)
        written += [(merged, name, False)] + ([(adapter, name, True)] if adapted else [])
        del state
    return written
