"""What changes when accelerate shards the trained module (FSDP2): each process holds a slice of every
parameter, gradient and optimiser state, and every forward pass gathers the slices it needs together with the
other processes. Under DDP, or in one process, every function here is what the unsharded code did before.

Three consequences, each a function:
- generation, evaluation and saving run with the parameters gathered once (`whole_parameters`), so a forward
  pass needs no collective and one process may run forward passes alone (it samples fewer tokens, or it
  evaluates while the others wait);
- a gradient norm is summed over the slices of every process (`clip_grad_norm`);
- state dicts are gathered whole for checkpoints and model folders, and restored from whole ones
  (`model_state`, `load_model_state`, `optimizer_state`, `load_optimizer_state`); with LoRA a checkpoint
  gathers the trained parameters alone, and the saved folders come from an unsharded twin of each adapted
  model (`models.lora.unsharded_twin`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from rlhfkit.runtime.distributed import all_sum, world


def is_sharded(accelerator: Any) -> bool:
    """Whether accelerate shards the trained module (FSDP); DDP and one process replicate it."""
    from accelerate.utils import DistributedType

    return getattr(accelerator, "distributed_type", None) == DistributedType.FSDP


def launch(accelerator: Any) -> dict[str, Any]:
    """How the run was launched, for its run file: processes and the engine that spread the trained module."""
    engine = "fsdp" if is_sharded(accelerator) else ("ddp" if world() > 1 else "single process")
    return {"processes": world(), "engine": engine}


def checkpoint_layout(accelerator: Any, lora: Any, critic: bool = True) -> dict[str, Any]:
    """What decides a checkpoint's layout: which tensors it holds (LoRA's trained ones alone, at its rank and
    targets; a critic's or none) and how the optimiser state is keyed (by name when sharded, by index
    otherwise)."""
    return {
        "lora_r": lora.r,
        "lora_target_modules": list(lora.target_modules),
        "sharded": is_sharded(accelerator),
        "critic": critic,
    }


def check_layout(saved: dict[str, Any] | None, current: dict[str, Any]) -> None:
    """A checkpoint resumes only into a run of the same layout: one clear line otherwise."""
    from rlhfkit.errors import UsageError

    saved = saved or {}  # a key the checkpoint lacks (it was written before the key existed) is not compared
    differ = ", ".join(
        f"{k}={saved[k]!r} (now {current[k]!r})" for k in current if k in saved and saved[k] != current[k]
    )
    if differ:
        raise UsageError(
            f"the checkpoint was written with {differ}; resume with the settings it was written with"
        )


def adamw(
    module: torch.nn.Module, groups: list[dict], accelerator: Any, **settings: Any
) -> torch.optim.AdamW:
    """AdamW over `groups`, with its fused kernel (one kernel for every parameter, ~4x faster steps on CPU
    and on CUDA) unless the module is sharded. The unsharded module is moved to the accelerator's device
    first: fused AdamW checks its parameters' device when it is built, and accelerate's `prepare` would move
    them there anyway."""
    if is_sharded(accelerator):  # FSDP turns parameters into DTensors in `prepare`: the per-tensor path
        return torch.optim.AdamW(groups, **settings)
    module.to(accelerator.device)
    fused = accelerator.device.type in fused_kernel_devices()
    return torch.optim.AdamW(groups, fused=fused, **settings)


def fused_kernel_devices() -> tuple[str, ...]:
    """The device types torch's fused optimiser kernels run on. Asked of a private torch function; where a
    torch version lacks it, none: AdamW takes its per-tensor path (slower, the same update)."""
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

        return tuple(_get_fused_kernels_supported_devices())
    except (ImportError, AttributeError, TypeError):
        return ()


def start(accelerator: Any, model: torch.nn.Module) -> None:
    """FSDP makes the module whose forward runs first the root of its shards: run one tiny forward through
    the prepared module before any part of it runs alone (generation calls the policy inside it)."""
    if is_sharded(accelerator):
        token = torch.zeros(1, 1, dtype=torch.long, device=accelerator.device)  # (1, 1)
        with torch.no_grad():  # by name: GPT-2's second positional argument is its KV cache
            model(input_ids=token, attention_mask=torch.ones_like(token))
        _reshard(model)


def _reshard(model: torch.nn.Module) -> None:
    """Every process back to its slices (FSDP keeps the root's parameters whole after a forward pass; the
    state-dict functions expect them sharded). Local: no collective."""
    for module in _fsdp_modules(model):
        module.reshard()


def _fsdp_modules(model: torch.nn.Module) -> list[Any]:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


@contextmanager
def whole_parameters(accelerator: Any, model: torch.nn.Module) -> Iterator[None]:
    """Inside, every parameter of `model` is whole on every process and stays so across forward passes (no
    collective in a forward pass); on exit each process keeps its slice again. Every process must enter."""
    if not is_sharded(accelerator):
        yield
        return
    modules = _fsdp_modules(model)
    for module in modules:
        module.unshard()
        module.set_reshard_after_forward(False, recurse=False)
    try:
        yield
    finally:
        # back to the configured behaviour; FSDP keeps the root's parameters whole after forward anyway
        configured = bool(accelerator.state.fsdp_plugin.reshard_after_forward)
        for module in modules:
            module.set_reshard_after_forward(configured and module is not model, recurse=False)
        _reshard(model)


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """This process's slice of a sharded tensor (DTensor), or the tensor itself."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def clip_grad_norm(accelerator: Any, parameters: Iterable[torch.nn.Parameter], max_norm: float) -> float:
    """Scale the gradients of `parameters` to a total L2 norm of at most `max_norm`; returns the norm before
    (the same on every process: gradients are all-reduced under DDP, the slices' squares summed when
    sharded). Non-finite norms are returned and nothing is scaled."""
    if not is_sharded(accelerator):
        return float(accelerator.clip_grad_norm_(parameters, max_norm))
    grads = [_local(p.grad) for p in parameters if p.grad is not None]
    device = grads[0].device if grads else accelerator.device
    squares = torch.zeros((), dtype=torch.float64, device=device)
    for g in grads:
        squares += g.double().pow(2).sum()
    norm = float(all_sum(squares).sqrt())  # every process holds a slice of every gradient
    if math.isfinite(norm) and norm > max_norm:
        for g in grads:
            g.mul_(max_norm / (norm + 1e-6))
    return norm


def _options() -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    # whole tensors, on the CPU, on the main process only (the others get an empty dict)
    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def _prefix(model: torch.nn.Module, part: torch.nn.Module) -> str:
    name = next(n for n, m in model.named_modules() if m is part)
    return f"{name}." if name else ""


def model_state(
    accelerator: Any, model: torch.nn.Module, part: Any = None, trained_only: bool = False
) -> dict[str, torch.Tensor]:
    """The whole state dict of `part` (a submodule of the prepared `model`; all of it by default), keyed as
    `part.state_dict()` is; `trained_only`: the parameters that train alone (LoRA: adapters and heads; the
    frozen ones are not even gathered). Sharded, every process must call and only the main one gets the
    tensors."""
    part = accelerator.unwrap_model(model) if part is None else part
    if not is_sharded(accelerator):
        state = part.state_dict()
    else:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        _reshard(model)
        prefix = _prefix(model, part)
        # whole tensors, on the CPU, on the main process only (the others get an empty dict); only `part`'s
        # (torch gathers every tensor first and filters after, unless told the submodule)
        options = StateDictOptions(
            full_state_dict=True,
            cpu_offload=True,
            ignore_frozen_params=trained_only,
            keep_submodule_prefixes=True,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # `submodules` is deprecated, not yet replaced
            whole = get_model_state_dict(model, submodules={part} if prefix else None, options=options)
        state = {k[len(prefix) :]: v for k, v in whole.items() if k.startswith(prefix)}
    if trained_only:
        trained = trained_names(part)
        state = {k: v for k, v in state.items() if k in trained}
    return state


def trained_names(part: torch.nn.Module) -> set[str]:
    """The state-dict names of the parameters of `part` that train: as `named_parameters` gives them, less
    the wrappers activation checkpointing puts around FSDP's blocks (state dicts leave those out)."""
    return {
        name.replace(f"{CHECKPOINT_WRAPPER}.", "")
        for name, parameter in part.named_parameters()
        if parameter.requires_grad
    }


CHECKPOINT_WRAPPER = "_checkpoint_wrapped_module"  # torch's name for a checkpointed module inside its wrapper


def load_model_state(
    accelerator: Any,
    model: torch.nn.Module,
    state: dict[str, torch.Tensor],
    part: Any = None,
    trained_only: bool = False,
) -> None:
    """Load a state dict (as `model_state` returns it) into `part` of `model`; each process keeps its
    slice when sharded. `trained_only`: `state` holds exactly the parameters that train."""
    part = accelerator.unwrap_model(model) if part is None else part
    if trained_only:
        trained = trained_names(part)
        if set(state) != trained:
            raise RuntimeError(f"checkpoint holds {len(state)} trained tensors, the model {len(trained)}")
    if not is_sharded(accelerator):
        part.load_state_dict(state, strict=not trained_only)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    _reshard(model)
    prefix = _prefix(model, part)
    whole = {prefix + k: v for k, v in state.items()}
    options = StateDictOptions(full_state_dict=True, strict=not trained_only)
    unmatched = set_model_state_dict(model, whole, options=options).unexpected_keys
    if unmatched:  # a name the model does not know would otherwise be skipped without a word
        raise RuntimeError(f"checkpoint tensors the model does not have: {sorted(unmatched)[:3]}")


def _unwrapped(optimizer: Any) -> torch.optim.Optimizer:
    return getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer holds the torch one


def optimizer_state(accelerator: Any, model: torch.nn.Module, optimizer: Any) -> dict[str, Any]:
    """The whole optimiser state (keyed by parameter names when sharded: every process must call)."""
    if not is_sharded(accelerator):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    _reshard(model)
    return get_optimizer_state_dict(model, _unwrapped(optimizer), options=_options())


def load_optimizer_state(accelerator: Any, model: torch.nn.Module, optimizer: Any, state: dict) -> None:
    if not is_sharded(accelerator):
        # the saved param groups replace the live ones: keep this run's kernel choice (fused or not)
        kernels = [{k: g.get(k) for k in ("fused", "foreach")} for g in optimizer.param_groups]
        optimizer.load_state_dict(state)
        for group, kernel in zip(optimizer.param_groups, kernels, strict=True):
            group.update(kernel)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    _reshard(model)
    set_optimizer_state_dict(
        model, _unwrapped(optimizer), state, options=StateDictOptions(full_state_dict=True)
    )


def no_split_modules(*models: Any) -> list[str]:
    """The layer classes FSDP may shard on their own (transformer blocks), of every model given."""
    names: list[str] = []
    for model in models:
        names += [n for n in getattr(model, "_no_split_modules", None) or [] if n not in names]
    return names
