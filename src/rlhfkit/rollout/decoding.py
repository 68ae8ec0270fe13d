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

import logging
from typing import Any

import torch

from rlhfkit.errors import first_line
from rlhfkit.models.forward import forward_parameters
from rlhfkit.models.scalar import position_ids

log = logging.getLogger("rlhfkit")


def forward_options(model: Any) -> tuple[str, dict]:
    """The name of the KV-cache argument (`cache` in recent transformers 5.x, `past_key_values` in earlier
    ones: 5.17 has it) and the extra arguments that save work (`logits_to_keep=1`: sampling needs the last
    position's logits only, not (B, P, V))."""
    parameters = forward_parameters(model)
    cache_name = "cache" if "cache" in parameters else "past_key_values"
    extra = {"logits_to_keep": 1} if "logits_to_keep" in parameters else {}
    return cache_name, extra


def choose_decoder(name: str, device: torch.device, sharded: bool = False, config: Any = None) -> str:
    """`auto` -> `compiled` on CUDA, `eager` elsewhere. Not compiled for a model with sliding-window layers
    (its cache's integer counters change every token: one recompile per token) -> `static` there. A
    sharded (FSDP) module gathers new weight tensors for every rollout, which neither a captured graph nor a
    cache kept between batches can follow -> `eager`, whatever was asked."""
    if sharded:
        if name in ("static", "compiled"):
            log.warning("decoder=%s cannot follow FSDP's gathered weights: decoding eagerly", name)
        return "eager"
    if name != "auto":
        return name
    if device.type != "cuda":
        return "eager"
    return "static" if sliding_window(config) else "compiled"


def sliding_window(config: Any) -> bool:
    """Whether a model config has sliding-window attention layers (Mistral, Gemma 2/3, ...)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    types = getattr(text, "layer_types", None) or ()
    return bool(getattr(text, "sliding_window", None)) or any("sliding" in str(t) for t in types)


class EagerDecoder:
    """Forward passes with the model's dynamic KV cache (it grows by one position per step)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.cache_name, self.extra = forward_options(model)

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
    """Forward passes with a KV cache of fixed length, reset between batches, so a compiled step sees the same
    tensors every time. The two newest caches (rollout and evaluation shapes) are kept; an older one is freed.
    `compile` is torch.compile's backend (`inductor` with CUDA graphs on CUDA; tests trace the step with the
    `eager` backend on CPU). `compiled_steps` counts the steps the compiled forward ran; `fallback` is why
    compiling failed (None while it has not), after which every step runs uncompiled."""

    KEPT = 2  # caches kept: one per shape a run alternates between (its rollouts, its evaluations)

    def __init__(self, model: Any, compile: str | None = None, width_multiple: int = 1) -> None:
        self.model, self.caches = model, {}
        self.cache_name, self.extra = forward_options(model)
        self.compiled_steps, self.fallback = 0, None
        # prompt widths are rounded up (more left padding, which the mask hides) so a compiled step is
        # traced for a few widths, not for every batch's own
        self.width_multiple = width_multiple
        self.forward = model
        if compile is not None:
            options = {"mode": "reduce-overhead"} if compile == "inductor" else {}
            self.forward = torch.compile(model, backend=compile, dynamic=False, **options)

    def _cache(self, rows: int, length: int, dtype: torch.dtype) -> Any:
        from transformers import StaticCache

        key = (rows, length, dtype)
        if key in self.caches:
            self.caches[key] = self.caches.pop(key)  # the newest last
            self.caches[key].reset()
            return self.caches[key]
        while len(self.caches) >= self.KEPT:
            del self.caches[next(iter(self.caches))]
        # transformers 5.x sizes each layer (rows, dtype, device) from the first keys it stores
        self.caches[key] = StaticCache(config=self.model.config, max_cache_len=length)
        return self.caches[key]

    def start(self, ids: torch.Tensor, mask: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        """(B, P) left-padded prompts and their mask -> (B, V) logits of the first response token."""
        rows, width = ids.shape
        left = -width % self.width_multiple
        self.ids = torch.nn.functional.pad(ids, (left, 0), value=0)  # (B, W) masked: any id will do
        # the mask is allocated at the cache's full length; step t switches on column W + t
        self.mask = torch.nn.functional.pad(mask.long(), (left, max_new_tokens), value=0)  # (B, W + T)
        self.width, self.fed = self.ids.shape[1], []
        autocast = torch.is_autocast_enabled(ids.device.type)
        dtype = torch.get_autocast_dtype(ids.device.type) if autocast else self.model.dtype
        self.cache = self._cache(rows, self.width + max_new_tokens, dtype)
        return self._prefill()

    def _prefill(self) -> torch.Tensor:
        """The prompt pass, eager: it runs once per batch, and its shapes are the batch's own."""
        positions = position_ids(self.mask[:, : self.width])  # (B, W)
        self.position = positions[:, -1:] + 1  # (B, 1)
        out = self.model(
            input_ids=self.ids,
            attention_mask=self.mask,
            position_ids=positions,
            use_cache=True,
            **{self.cache_name: self.cache},
            **self.extra,
        )
        return out.logits[:, -1]

    def step(self, token: torch.Tensor) -> torch.Tensor:
        """(B,) the tokens just sampled -> (B, V) logits of the next ones."""
        self.mask[:, self.width + len(self.fed)] = 1
        try:
            logits = self._step(self.forward, token)
            self.compiled_steps += self.forward is not self.model
        except Exception as exc:
            if self.forward is self.model or not _compile_failure(exc):
                raise
            # a model or torch build torch.compile cannot handle: part of the step may have written the
            # cache, so the batch so far is run again, uncompiled, from its prompt
            self.fallback = first_line(exc)
            log.warning("torch.compile failed (%s); decoding with the static cache uncompiled", self.fallback)
            self.forward = self.model
            self.cache.reset()
            fed, self.fed = self.fed, []
            self._prefill()
            for earlier in fed:
                self._step(self.model, earlier)
            logits = self._step(self.model, token)
        return logits

    def _step(self, forward: Any, token: torch.Tensor) -> torch.Tensor:
        out = forward(
            input_ids=token[:, None],
            attention_mask=self.mask,
            position_ids=self.position,
            use_cache=True,
            **{self.cache_name: self.cache},
            **self.extra,
        )
        self.position = self.position + 1
        self.fed.append(token)
        # a copy: a CUDA graph's output buffer is overwritten by its next replay
        return out.logits[:, -1].clone()


def _compile_failure(exc: BaseException) -> bool:
    """Whether `exc` comes from torch.compile (dynamo's tracing, a backend's compiling), not from running the
    model (out of memory, a bad input): only the former falls back to the uncompiled step. Dynamo's exception
    classes are private API: where a torch version lacks them, the module an exception was raised from
    decides alone."""
    return isinstance(exc, _dynamo_exceptions()) or type(exc).__module__.startswith(
        ("torch._dynamo", "torch._inductor")
    )


def _dynamo_exceptions() -> tuple[type, ...]:
    """torch.compile's own exception types, `()` where this torch has other names (private API)."""
    try:
        from torch._dynamo import exc as dynamo

        return (dynamo.TorchDynamoException, dynamo.BackendCompilerFailed)
    except (ImportError, AttributeError):
        return ()


def make_decoder(model: Any, name: str) -> EagerDecoder | StaticDecoder:
    """The decoder called `name` (after `choose_decoder`): `eager`, `static`, or `compiled`."""
    if name == "eager":
        return EagerDecoder(model)
    if name == "static":
        return StaticDecoder(model)
    return StaticDecoder(model, compile="inductor", width_multiple=64)
