"""Hugging Face models for the four roles: loading, the scalar head (RM, critic), tiny and SmolLM2 models."""

from rlhfkit.models.loading import (
    PAD_TOKEN,
    init_scalar_head,
    load_causal_lm,
    load_scalar_model,
    load_tokenizer,
    save_model,
)
from rlhfkit.models.scalar import position_ids, scalar_values, sequence_scores
from rlhfkit.models.smollm2 import smollm2
from rlhfkit.models.tiny import tiny_llama, train_tokenizer

__all__ = [
    "PAD_TOKEN",
    "init_scalar_head",
    "load_causal_lm",
    "load_scalar_model",
    "load_tokenizer",
    "save_model",
    "position_ids",
    "scalar_values",
    "sequence_scores",
    "smollm2",
    "tiny_llama",
    "train_tokenizer",
]
