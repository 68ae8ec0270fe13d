"""Frozen weights stored in a narrow dtype (bf16, to halve their memory) that compute like the trained copy.

PPO compares a trained model with a frozen twin: the actor with the reference (the KL penalty) and the critic
with the reward model (the critic's values start as the RM's). With `model_dtype=bfloat16` and no LoRA the
twins are stored in bf16 while the trained copies are fp32. Two things then make them disagree before any
update: the weights (the fp32 folder rounded to bf16 for the frozen copy only) and the arithmetic (bf16
matrix products against fp32 ones). `round_like` starts the trained copy from the frozen copy's rounded
weights; `compute_in` makes the frozen copy compute with weights cast, one module at a time, to the trained
copy's dtype. The two then give the same numbers, so the KL is 0 before the first update whatever
`model_dtype` (docs/ppo-details.md #12), while only one module's weights exist in fp32 at any moment.
"""

from __future__ import annotations

from typing import Any

import torch


@torch.no_grad()
def round_like(model: Any, storage: torch.dtype) -> Any:
    """Round every floating-point parameter of `model` to `storage` and back, in place: the weights a copy
    loaded in `storage` holds, kept in the model's own dtype. Returns the model."""
    for parameter in model.parameters():
        if parameter.is_floating_point() and parameter.dtype != storage:
            parameter.copy_(parameter.to(storage))
    return model


def compute_in(model: Any, dtype: torch.dtype) -> Any:
    """Make every forward pass of `model` use its parameters cast to `dtype` (its stored parameters are left
    as they are): a hook casts a module's own parameters when the module is called and puts the stored ones
    back when it returns. For frozen models only (the casts carry no gradient). Returns the model."""
    for module in model.modules():
        own = [name for name, p in module.named_parameters(recurse=False) if p.is_floating_point()]
        if own and any(getattr(module, name).dtype != dtype for name in own):
            stored: dict[str, torch.nn.Parameter] = {}
            module.register_forward_pre_hook(_cast(own, dtype, stored))
            module.register_forward_hook(_restore(stored), always_call=True)  # also when it raises
    return model


def _cast(names: list[str], dtype: torch.dtype, stored: dict) -> Any:
    def hook(module: torch.nn.Module, args: Any) -> None:
        for name in names:
            parameter = module._parameters[name]
            stored[name] = parameter
            module._parameters[name] = torch.nn.Parameter(parameter.detach().to(dtype), requires_grad=False)

    return hook


def _restore(stored: dict) -> Any:
    def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
        module._parameters.update(stored)
        stored.clear()

    return hook
