"""Loading Hugging Face tokenizers and models for the four roles, from a local folder or a hub name."""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from rlhfkit.errors import UsageError, first_line
from rlhfkit.models.lora import adapter_base, is_adapter_folder, merged_with_adapter

PAD_TOKEN = "<|pad|>"


def check_source(name: str) -> None:
    """A name that can only be a local path must exist: fail at once instead of asking the hub."""
    if not Path(name).expanduser().exists() and (name.startswith((".", "/", "~")) or name.count("/") > 1):
        raise UsageError(f"{name}: model folder does not exist")


def load_tokenizer(name: str) -> Any:
    """The tokenizer of `name`, with a pad token distinct from EOS.

    With pad == EOS the index of a sequence's last real token is ambiguous (the reward would be read at the
    wrong place), so a tokenizer without its own pad token gets `<|pad|>` added; the model must then be
    resized (`load_causal_lm` / `load_scalar_model` do it).
    """
    from transformers import AutoTokenizer

    check_source(name)
    if is_adapter_folder(name) and not (Path(name).expanduser() / "tokenizer_config.json").is_file():
        name = adapter_base(name)  # an adapter saved without its tokenizer: the base's
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
    except Exception as exc:  # a missing folder, no tokenizer files, offline hub: the user's to fix
        raise UsageError(f"{name}: could not load a tokenizer ({first_line(exc)})") from None
    if tokenizer.eos_token_id is None:
        raise UsageError(f"{name}: the tokenizer has no EOS token")
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    return tokenizer


def _match_tokenizer(model: Any, tokenizer: Any) -> None:
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id


def load_causal_lm(name: str, tokenizer: Any, dtype: torch.dtype = torch.float32) -> Any:
    """A causal LM (SFT model, actor, reference) whose vocabulary covers `tokenizer`. An adapter folder is
    loaded as its base with the adapter merged in."""
    from transformers import AutoModelForCausalLM

    if is_adapter_folder(name):
        return merged_with_adapter(name, load_causal_lm(adapter_base(name), tokenizer, dtype))
    try:
        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype)
    except Exception as exc:
        raise UsageError(f"{name}: could not load a causal language model ({first_line(exc)})") from None
    _match_tokenizer(model, tokenizer)
    return model


def init_scalar_head(head: torch.nn.Linear) -> None:
    """A new scalar head: weights N(0, 1/sqrt(d + 1)), bias 0 (Ziegler et al.; Huang et al. 2024)."""
    torch.nn.init.normal_(head.weight, std=1.0 / math.sqrt(head.in_features + 1))
    if head.bias is not None:
        torch.nn.init.zeros_(head.bias)


def load_scalar_model(name: str, tokenizer: Any, dtype: torch.dtype = torch.float32) -> Any:
    """Reward model / critic: `AutoModelForSequenceClassification` with one label on `name`'s backbone.

    From a causal-LM folder the `score` head is new and initialised by `init_scalar_head`; from a saved
    reward model it is loaded as trained. The head is fp32 whatever `dtype` (it is tiny, and scores stay
    fp32). An adapter folder is loaded as its base with the adapter merged in.
    """
    from transformers import AutoModelForSequenceClassification

    if is_adapter_folder(name):
        return merged_with_adapter(name, load_scalar_model(adapter_base(name), tokenizer, dtype))
    try:
        model, info = AutoModelForSequenceClassification.from_pretrained(
            name, num_labels=1, dtype=dtype, output_loading_info=True
        )
    except Exception as exc:
        raise UsageError(
            f"{name}: could not load a sequence-classification model ({first_line(exc)})"
        ) from None
    if not isinstance(getattr(model, "score", None), torch.nn.Linear):
        raise UsageError(
            f"{name}: {type(model).__name__} has no `score` head; use a decoder model (Llama, Qwen, GPT-2...)"
        )
    if any(key.split(".")[0] == "score" for key in info["missing_keys"]):
        init_scalar_head(model.score)
    model.score.float()
    _match_tokenizer(model, tokenizer)
    return model


WEIGHT_FILES = ("model*.safetensors", "model.safetensors.index.json", "pytorch_model*.bin*")


def without_tied_copies(model: Any, state_dict: dict) -> dict:
    """`state_dict` less the keys of tied weights after the first (an LM head tied to the embeddings):
    `save_pretrained` drops them itself only when they share storage, which gathered copies do not."""
    first: dict[int, str] = {}
    for key, tensor in model.state_dict(keep_vars=True).items():
        first.setdefault(id(tensor), key)
    kept = set(first.values())
    return {k: v for k, v in state_dict.items() if k in kept}


def save_model(model: Any, tokenizer: Any, target: Path, state_dict: dict | None = None) -> None:
    """`save_pretrained` of model and tokenizer into a staging folder, then moved into place: the whole folder
    in one rename when `target` is new, else file by file, after removing the old weight files the new save
    does not have (an `sft`/`rm` output folder also holds metrics and config, which stay). The staging folder
    sits on `target`'s own file system: beside a new target, inside an existing one (a mount point too).
    `state_dict`, when given, holds the weights to save (gathered whole from a sharded model)."""
    if state_dict is not None:
        state_dict = without_tied_copies(model, state_dict)
    target = Path(target).resolve()
    exists = target.exists()
    staging = target / ".save.tmp" if exists else target.with_name(f".{target.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging, state_dict=state_dict)
    tokenizer.save_pretrained(staging)
    if not exists:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, target)
        return
    for pattern in WEIGHT_FILES:  # a leftover shard or single file would be loaded instead of the new one
        for old in target.glob(pattern):
            if not (staging / old.name).exists():
                old.unlink()
    for path in staging.iterdir():
        if (target / path.name).is_dir():
            shutil.rmtree(target / path.name)
        os.replace(path, target / path.name)
    staging.rmdir()
