"""LoRA adapters through `peft`: adding them to a loaded model, saving them (adapter folder + merged folder),
and loading an adapter folder where a model folder is expected.

With an adapter on a frozen base, switching the adapter off gives back the base bit for bit (LoRA's B starts
at zero and a disabled adapter is skipped), which is what lets PPO's reference and reward model be the actor's
and critic's own bases (see `rlhfkit.algorithms.ppo.roles.SharedBases`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from rlhfkit.errors import UsageError, first_line

ADAPTER_CONFIG = "adapter_config.json"
SCALAR_HEAD = "score"  # the sequence-classification head: trained in full, never adapted


def is_adapter_folder(name: str) -> bool:
    return (Path(name).expanduser() / ADAPTER_CONFIG).is_file()


def adapter_base(name: str) -> str:
    """The base model an adapter folder names (`base_model_name_or_path`), which must exist; a relative path
    is taken from the current folder, else from the adapter folder."""
    folder = Path(name).expanduser()
    try:
        base = json.loads((folder / ADAPTER_CONFIG).read_text())["base_model_name_or_path"]
    except (OSError, ValueError, KeyError) as exc:
        raise UsageError(f"{name}: unreadable adapter config ({exc})") from None
    if base and not Path(base).expanduser().exists() and (folder / base).exists():
        return str(folder / base)
    if not base or (base.startswith((".", "/", "~")) and not Path(base).expanduser().exists()):
        raise UsageError(f"{name}: the adapter's base model {base!r} is missing")
    return base


def linear_layer_names(model: Any) -> list[str]:
    """The names of the linear layers of the transformer body (attention and MLP projections; GPT-2's Conv1D
    too), not of the LM or scalar head, which sit outside the body."""
    from transformers.pytorch_utils import Conv1D

    body = getattr(model, model.base_model_prefix)
    return sorted(
        {
            name.rsplit(".", 1)[-1]
            for name, module in body.named_modules()
            if isinstance(module, (torch.nn.Linear, Conv1D))
        }
    )


def add_adapter(model: Any, lora: Any, source: str) -> Any:
    """`model` (loaded from `source`) frozen, with a LoRA adapter per `lora` (a `LoraConfig`); a scalar-head
    model also gets a trainable copy of its head, the original kept for the adapter-off model. Returns the
    `PeftModel`; trained parameters are fp32 whatever the base's dtype."""
    import peft

    targets = list(lora.target_modules) or linear_layer_names(model)
    names = [name for name, _ in model.named_modules()]
    # an adapter merged into a weight the embeddings and the LM head share would change both
    shared = [model.get_input_embeddings(), model.get_output_embeddings()]
    tied = {
        name
        for name, module in model.named_modules()
        if getattr(model.config, "tie_word_embeddings", False) and any(module is m for m in shared)
    }
    for target in targets:
        matched = [name for name in names if name == target or name.endswith(f".{target}")]
        if not matched:
            raise UsageError(f"lora.target_modules: {target!r} matches no module of {source}")
        if tied.intersection(matched):
            raise UsageError(
                f"lora.target_modules: {target!r} is the embedding matrix the LM head shares ({source} ties "
                "them); adapt the attention and MLP layers"
            )
    scalar = isinstance(getattr(model, SCALAR_HEAD, None), torch.nn.Linear)
    config = peft.LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets,
        modules_to_save=[SCALAR_HEAD] if scalar else None,
        bias="none",
    )
    try:
        adapted = peft.get_peft_model(model, config)
    except (ValueError, TypeError, RuntimeError) as exc:  # e.g. a layer type LoRA cannot adapt
        raise UsageError(f"lora.target_modules: {first_line(exc)}") from None
    local = Path(source).expanduser()
    # where the adapter folder says its base is: an absolute path, so it loads from any directory
    adapted.peft_config["default"].base_model_name_or_path = (
        str(local.resolve()) if local.exists() else source
    )
    for parameter in adapted.parameters():
        if parameter.requires_grad:
            parameter.data = parameter.data.float()
    return adapted


def merged_with_adapter(name: str, base: Any) -> Any:
    """The model of the adapter folder `name` on `base` (already loaded), the adapter merged in: a plain
    model, as if the merged folder had been loaded."""
    import peft

    try:
        merged = peft.PeftModel.from_pretrained(base, name).merge_and_unload()
    except Exception as exc:
        raise UsageError(f"{name}: could not load the adapter ({first_line(exc)})") from None
    return merged.requires_grad_(True)  # peft froze the base for inference; a loaded model is trainable


def remove_stale_adapter(folder: Path) -> None:
    """An earlier LoRA run's adapter folder in an output folder now written without LoRA (`--overwrite`): it
    no longer matches the model beside it."""
    if is_adapter_folder(str(folder)):
        shutil.rmtree(folder)


def unsharded_twin(adapted: Any, state: dict[str, torch.Tensor]) -> Any:
    """A `PeftModel` like `adapted` holding `state`, the whole state dict of its base (adapters, trained head
    and frozen weights, as `adapted.get_base_model().state_dict()` keys it): what saves a model whose live
    parameters are sharded (FSDP), each process holding a slice. Built on the meta device and given the
    tensors of `state` (nothing loaded twice); the buffers a state dict leaves out (rotary frequencies)
    are copied from the live model, which FSDP does not shard. Merging it changes `state`, not the live
    model."""
    import copy
    import warnings

    import peft

    base, config = adapted.get_base_model(), copy.deepcopy(adapted.peft_config["default"])
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peft's note that it renames the base: it is set back just below
        twin = peft.get_peft_model(type(base)._from_config(base.config), config)
    twin.peft_config["default"].base_model_name_or_path = config.base_model_name_or_path  # peft resets it
    body = twin.get_base_model()
    body.load_state_dict(state, strict=True, assign=True)
    body.tie_weights()  # a tied head is one tensor again, as in the live model
    for name, buffer in base.named_buffers():
        owner, _, leaf = name.rpartition(".")
        if getattr(body.get_submodule(owner), leaf).is_meta:
            setattr(body.get_submodule(owner), leaf, buffer.detach().clone())
    return twin


def save_adapted(adapted: Any, tokenizer: Any, merged: Path, adapter: Path, save_model: Any) -> None:
    """`adapter`: the PEFT folder (`PeftModel.from_pretrained(base, adapter)` loads it) with the tokenizer;
    then `merged`: a plain model folder with the adapter merged into the base weights (in the base's dtype).
    Merging changes `adapted` in place: call last."""
    save_model(adapted, tokenizer, adapter)
    save_model(adapted.merge_and_unload(), tokenizer, merged)
