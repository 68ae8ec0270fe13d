"""How the sampler runs the model token by token: the forward passes behind `generate`, with one of two KV
caches.

- `EagerDecoder`: the model's own growing cache; every step has new shapes. The path on CPU (where a step is
  bound by its matrix products, not by launching them).
- `StaticDecoder`: a cache allocated once at its full length (prompt + max_new_tokens), so every step has the
  same shapes and the same tensors. On CUDA the step is compiled with `torch.compile(mode="reduce-overhead")`,
  which captures it as a CUDA graph and replays it: one launch per token instead of several per layer and
  Python in between (a 135M model's decoding is launch-bound: ~30 ms per token eager). Both decoders sample
  the same tokens (tests/rollout/test_decoding.py).

A decoder is used for one batch at a time: `start` runs the prompts and returns the last position's logits;
each `step` feeds one token per row and returns the next logits.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

import torch

from rlhfkit.errors import first_line
from rlhfkit.models.scalar import position_ids

log = logging.getLogger("rlhfkit")
DECODERS = ("auto", "eager", "static", "compiled")


def forward_options(model: Any) -> tuple[str, dict, bool]:
    """The name of the KV-cache argument (`cache` in transformers >= 5.x, `past_key_values` before), the
    extra arguments that save work (`logits_to_keep=1`: sampling needs the last position's logits only, not
    (B, P, V)), and whether the forward takes `cache_position` (transformers 4.x static caches need it)."""
    parameters = inspect.signature(model.forward).parameters
    cache_name = "cache" if "cache" in parameters else "past_key_values"
    extra = {"logits_to_keep": 1} if "logits_to_keep" in parameters else {}
    return cache_name, extra, "cache_position" in parameters


def choose_decoder(name: str, device: torch.device, sharded: bool = False) -> str:
    """`auto` -> `compiled` on CUDA (unless the module is sharded: FSDP gathers new weight tensors for every
    rollout, which a captured graph cannot follow), `eager` elsewhere; any other name is kept."""
    if name != "auto":
        return name
    return "compiled" if device.type == "cuda" and not sharded else "eager"


class EagerDecoder:
    """Forward passes with the model's dynamic KV cache (it grows by one position per step)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.cache_name, self.extra, _ = forward_options(model)

    def start(self, ids: torch.Tensor, mask: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        """(B, P) left-padded prompts and their mask -> (B, V) logits of the first response token."""
        self.mask = mask.long()  # (B, P + t) grows by one column per step
        positions = position_ids(self.mask)  # (B, P)
        self.position = positions[:, -1:] + 1  # (B, 1)
        out = self.model(
            input_ids=ids, attention_mask=self.mask, position_ids=positions, use_cache=True, **self.extra
        )
        self.cache = out[self.cache_name]
        return out.logits[:, -1]

    def step(self, token: torch.Tensor) -> torch.Tensor:
        """(B,) the tokens just sampled -> (B, V) logits of the next ones."""
        self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=1)  # (B, P + t + 1)
        out = self.model(
            input_ids=token[:, None],
            attention_mask=self.mask,
            position_ids=self.position,
            use_cache=True,
            **{self.cache_name: self.cache},
            **self.extra,
        )
        self.cache, self.position = out[self.cache_name], self.position + 1
        return out.logits[:, -1]


class StaticDecoder:
    """Forward passes with a KV cache of fixed length. The cache of each (rows, length, dtype) is kept and
    reset between batches, so a compiled step sees the same tensors every time. `compile` is torch.compile's
    backend (`inductor` with CUDA graphs on CUDA; tests trace the step with the `eager` backend on CPU)."""

    def __init__(self, model: Any, compile: str | None = None, width_multiple: int = 1) -> None:
        self.model, self.caches = model, {}
        self.cache_name, self.extra, self.cache_position = forward_options(model)
        # prompt widths are rounded up (more left padding, which the mask hides) so a compiled step is
        # traced for a few widths, not for every batch's own
        self.width_multiple = width_multiple
        self.forward = model
        if compile is not None:
            options = {"mode": "reduce-overhead"} if compile == "inductor" else {}
            self.forward = torch.compile(model, backend=compile, dynamic=False, **options)

    def _cache(self, rows: int, length: int, dtype: torch.dtype, device: torch.device) -> Any:
        from transformers import StaticCache

        key = (rows, length, dtype)
        if key not in self.caches:
            # transformers 5.x sizes the cache from the first keys it stores; 4.x reads the last three
            sizes = {"max_batch_size": rows, "dtype": dtype, "device": device}
            self.caches[key] = StaticCache(config=self.model.config, max_cache_len=length, **sizes)
        else:
            self.caches[key].reset()
        return self.caches[key]

    def start(self, ids: torch.Tensor, mask: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        """(B, P) left-padded prompts and their mask -> (B, V) logits of the first response token."""
        rows, width = ids.shape
        left = -width % self.width_multiple
        ids = torch.nn.functional.pad(ids, (left, 0), value=0)  # (B, W) masked: any id will do
        # the mask is allocated at the cache's full length; step t switches on column W + t
        self.mask = torch.nn.functional.pad(mask.long(), (left, max_new_tokens), value=0)  # (B, W + T)
        self.width = ids.shape[1]
        positions = position_ids(self.mask[:, : self.width])  # (B, W)
        self.position = positions[:, -1:] + 1  # (B, 1)
        dtype = (
            torch.get_autocast_dtype(ids.device.type) if torch.is_autocast_enabled(ids.device.type) else None
        )
        self.cache = self._cache(rows, self.width + max_new_tokens, dtype or self.model.dtype, ids.device)
        self.t = 0
        # the prompt pass runs eagerly: it runs once per batch, and its shapes are the batch's own
        out = self.model(
            input_ids=ids,
            attention_mask=self.mask,
            position_ids=positions,
            use_cache=True,
            **{self.cache_name: self.cache},
            **self._cache_position(torch.arange(self.width, device=ids.device)),
            **self.extra,
        )
        return out.logits[:, -1]

    def step(self, token: torch.Tensor) -> torch.Tensor:
        """(B,) the tokens just sampled -> (B, V) logits of the next ones."""
        column = self.width + self.t
        self.mask[:, column] = 1
        arguments = {
            "input_ids": token[:, None],
            "attention_mask": self.mask,
            "position_ids": self.position,
            "use_cache": True,
            self.cache_name: self.cache,
            **self._cache_position(torch.tensor([column], device=token.device)),
            **self.extra,
        }
        try:
            out = self.forward(**arguments)
        except Exception as exc:  # a model or torch build torch.compile cannot handle: the uncompiled step
            if self.forward is self.model:
                raise
            log.warning(
                "torch.compile failed (%s); decoding with the static cache uncompiled", first_line(exc)
            )
            self.forward = self.model
            out = self.forward(**arguments)
        self.position, self.t = self.position + 1, self.t + 1
        # a copy: a CUDA graph's output buffer is overwritten by its next replay
        return out.logits[:, -1].clone()

    def _cache_position(self, positions: torch.Tensor) -> dict:
        """transformers 4.x writes a static cache at `cache_position`; 5.x counts what it has written."""
        return {"cache_position": positions} if self.cache_position else {}


def make_decoder(model: Any, name: str) -> EagerDecoder | StaticDecoder:
    """The decoder called `name` (after `choose_decoder`): `eager`, `static`, or `compiled`."""
    if name == "eager":
        return EagerDecoder(model)
    if name == "static":
        return StaticDecoder(model)
    return StaticDecoder(model, compile="inductor", width_multiple=64)
