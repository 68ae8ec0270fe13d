"""Log-probabilities of chosen tokens without a second (B, T, V) tensor."""

from __future__ import annotations

from collections.abc import Iterator

import torch

# Positions handled at once: about 2^24 floats (64 MiB in fp32) of temporaries per chunk, whatever the
# vocabulary.
_CHUNK_ELEMENTS = 1 << 24


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # Half-precision logits are read in fp32: log-probs feed ratios and KLs, where bf16 rounding alone moves
    # the PPO ratio by ~5 %.
    return torch.float64 if dtype == torch.float64 else torch.float32


def _chunks(shape: torch.Size) -> Iterator[tuple[int, slice]]:
    """(row, time-slice) pairs covering a (B, T, V) tensor. Slicing a row keeps a view: flattening a
    non-contiguous (B, T, V) slice such as `logits[:, ctx - 1 : -1]` would copy it whole."""
    batch, time, vocab = shape
    step = max(1, _CHUNK_ELEMENTS // max(vocab, 1))
    for b in range(batch):
        for start in range(0, time, step):
            yield b, slice(start, min(start + step, time))


class _TokenLogprob(torch.autograd.Function):
    """log_softmax(z / T)[token] for (B, T, V) logits, forward and backward in chunks.

    Backward: d/dz_j [z_k/T - logsumexp(z/T)] = (1[j = k] - softmax(z/T)_j) / T. Only the logits (which
    already exist) and a (B, T) logsumexp are saved, so no (n, V) temporary outlives its chunk.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, tokens: torch.Tensor, temperature: float) -> torch.Tensor:
        dtype = _compute_dtype(logits.dtype)
        out = torch.empty(tokens.shape, dtype=dtype, device=logits.device)  # (B, T)
        lse = torch.empty_like(out)  # (B, T)
        for b, ts in _chunks(logits.shape):
            scaled = logits[b, ts].to(dtype) / temperature  # (n, V), freed after this chunk
            lse[b, ts] = torch.logsumexp(scaled, dim=-1)
            out[b, ts] = scaled.gather(-1, tokens[b, ts, None]).squeeze(-1) - lse[b, ts]
        ctx.save_for_backward(logits, tokens, lse)
        ctx.temperature = temperature
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        logits, tokens, lse = ctx.saved_tensors
        temperature = ctx.temperature
        upstream = grad_out.to(lse.dtype)  # (B, T)
        grad = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)  # (B, T, V)
        for b, ts in _chunks(logits.shape):
            probs = torch.exp(logits[b, ts].to(lse.dtype) / temperature - lse[b, ts, None])  # (n, V)
            g = probs.mul_(-upstream[b, ts, None])  # (n, V): -softmax * upstream
            g.scatter_add_(-1, tokens[b, ts, None], upstream[b, ts, None])  # + one-hot * upstream
            grad[b, ts] = g.div_(temperature)
        return grad, None, None


def logprobs_from_logits(
    logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """`log_softmax(logits / temperature)` gathered at `tokens`.

    logits: (B, T, V), any float dtype (half precision is computed in fp32); tokens: (B, T) integer.
    Returns (B, T): fp32, or fp64 for fp64 logits. Differentiable with respect to `logits`.
    Memory: allocates no (B, T, V) temporary besides the gradient itself, even for a strided slice.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if logits.dim() != 3 or logits.shape[:-1] != tokens.shape:
        raise ValueError(
            f"expected logits (B, T, V) and tokens (B, T), got {tuple(logits.shape)} and "
            f"{tuple(tokens.shape)}"
        )
    if logits.is_contiguous():  # one long row: bigger chunks, fewer Python steps
        flat = _TokenLogprob.apply(
            logits.view(1, -1, logits.shape[-1]), tokens.reshape(1, -1).long(), float(temperature)
        )  # (1, B*T)
        return flat.view(tokens.shape)  # (B, T)
    return _TokenLogprob.apply(logits, tokens.long(), float(temperature))


@torch.no_grad()
def entropy_from_logits(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy of `softmax(logits / temperature)` at every position: (B, T, V) -> (B, T), fp32 (fp64 for
    fp64 logits). Chunked like `logprobs_from_logits`; a metric, so no gradient."""
    dtype = _compute_dtype(logits.dtype)
    out = torch.empty(logits.shape[:-1], dtype=dtype, device=logits.device)  # (B, T)
    for b, ts in _chunks(logits.shape):
        logp = torch.log_softmax(logits[b, ts].to(dtype) / temperature, dim=-1)  # (n, V)
        out[b, ts] = -(logp.exp() * logp).sum(-1)
    return out


# Rows of hidden states whose logits exist at once in `logprobs_from_hidden`: 2^24 floats of (rows, V).
def _hidden_chunk(vocab: int) -> int:
    return max(1, _CHUNK_ELEMENTS // max(vocab, 1))


class _HeadTokenLogprob(torch.autograd.Function):
    """log_softmax((h W^T + b) / T)[token] for (N, H) hidden states, chunk by chunk of rows; the backward
    recomputes each chunk's logits, so no (N, V) tensor ever exists (Liger's fused linear cross-entropy and
    Cut Cross-Entropy work this way).

    With z = h W^T + b and g = (onehot(token) - softmax(z / T)) * upstream / T, the (n, V) gradient of a
    chunk's logits: dh = g W, dW += g^T h, db += sum_rows g."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, tokens, temperature):
        with torch.autocast(hidden.device.type, enabled=False):  # fp32 products, even under bf16 autocast
            return _HeadTokenLogprob._forward(ctx, hidden, weight, bias, tokens, temperature)

    @staticmethod
    def _forward(ctx, hidden, weight, bias, tokens, temperature):
        dtype = _compute_dtype(hidden.dtype)
        out = torch.empty(tokens.shape, dtype=dtype, device=hidden.device)  # (N,)
        lse = torch.empty_like(out)  # (N,)
        step = _hidden_chunk(weight.shape[0])
        w = weight.to(dtype)  # (V, H) cast once, not per chunk
        b = None if bias is None else bias.to(dtype)  # (V,)
        for start in range(0, hidden.shape[0], step):
            rows = slice(start, start + step)
            scaled = _head(hidden[rows], w, b, dtype) / temperature  # (n, V), freed after the chunk
            lse[rows] = torch.logsumexp(scaled, dim=-1)
            out[rows] = scaled.gather(-1, tokens[rows, None]).squeeze(-1) - lse[rows]
        ctx.save_for_backward(hidden, weight, bias, tokens, lse)
        ctx.temperature = temperature
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        with torch.autocast(grad_out.device.type, enabled=False):
            return _HeadTokenLogprob._backward(ctx, grad_out)

    @staticmethod
    def _backward(ctx, grad_out):
        hidden, weight, bias, tokens, lse = ctx.saved_tensors
        dtype, temperature = lse.dtype, ctx.temperature
        upstream = grad_out.to(dtype)  # (N,)
        # only the gradients autograd asks for: a frozen head (LoRA) needs no (V, H) accumulation
        wants_hidden, wants_weight, wants_bias = ctx.needs_input_grad[:3]
        grad_hidden = torch.empty(hidden.shape, dtype=dtype, device=hidden.device) if wants_hidden else None
        grad_weight = torch.zeros(weight.shape, dtype=dtype, device=weight.device) if wants_weight else None
        grad_bias = torch.zeros(bias.shape, dtype=dtype, device=bias.device) if wants_bias else None
        w = weight.to(dtype)  # (V, H) cast once, not per chunk
        b = None if bias is None else bias.to(dtype)  # (V,)
        step = _hidden_chunk(weight.shape[0])
        for start in range(0, hidden.shape[0], step):
            rows = slice(start, start + step)
            h = hidden[rows].to(dtype)  # (n, H)
            probs = torch.exp(_head(h, w, b, dtype) / temperature - lse[rows, None])  # (n, V)
            g = probs.mul_(-upstream[rows, None])  # (n, V)
            g.scatter_add_(-1, tokens[rows, None], upstream[rows, None]).div_(temperature)
            if wants_hidden:
                grad_hidden[rows] = g @ w  # (n, H)
            if wants_weight:
                grad_weight.addmm_(g.T, h)  # (V, H)
            if wants_bias:
                grad_bias += g.sum(0)
        return (
            None if grad_hidden is None else grad_hidden.to(hidden.dtype),
            None if grad_weight is None else grad_weight.to(weight.dtype),
            None if grad_bias is None else grad_bias.to(bias.dtype),
            None,
            None,
        )


def _head(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype):
    """(n, H) hidden states -> (n, V) logits of the LM head, computed in `dtype`."""
    logits = hidden.to(dtype) @ weight.to(dtype).T  # (n, V)
    return logits if bias is None else logits + bias.to(dtype)


def logprobs_from_hidden(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    tokens: torch.Tensor,
    temperature: float = 1.0,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """`logprobs_from_logits(hidden @ weight.T + bias, tokens, temperature)` without the logits: the LM head
    applied chunk by chunk of positions, and again in the backward, so no (B, T, V) tensor exists — at a
    128k vocabulary that tensor is the largest of a PPO or DPO step.

    hidden: (B, T, H) the states the head reads (after the model's final norm); weight: (V, H) the head's (an
    embedding matrix tied to it is the same tensor: its gradient arrives there); bias: (V,) or None; tokens:
    (B, T). Returns (B, T) in fp32 (fp64 for fp64 states), differentiable with respect to hidden, weight and
    bias; computed in fp32 whatever the states' dtype."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if hidden.dim() != 3 or hidden.shape[:-1] != tokens.shape or weight.shape[-1] != hidden.shape[-1]:
        raise ValueError(
            f"expected hidden (B, T, H), weight (V, H) and tokens (B, T), got {tuple(hidden.shape)}, "
            f"{tuple(weight.shape)} and {tuple(tokens.shape)}"
        )
    flat = hidden.reshape(-1, hidden.shape[-1])  # (B*T, H)
    out = _HeadTokenLogprob.apply(flat, weight, bias, tokens.reshape(-1).long(), float(temperature))  # (B*T,)
    return out.view(tokens.shape)  # (B, T)


@torch.no_grad()
def entropy_from_hidden(
    hidden: torch.Tensor, weight: torch.Tensor, temperature: float = 1.0, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """`entropy_from_logits` of the head's logits, chunk by chunk of positions: (B, T, H) -> (B, T)."""
    with torch.autocast(hidden.device.type, enabled=False):  # fp32 products, as `logprobs_from_hidden`
        return _entropy_from_hidden(hidden, weight, temperature, bias)


def _entropy_from_hidden(
    hidden: torch.Tensor, weight: torch.Tensor, temperature: float, bias: torch.Tensor | None
) -> torch.Tensor:
    dtype = _compute_dtype(hidden.dtype)
    flat = hidden.reshape(-1, hidden.shape[-1])  # (B*T, H)
    out = torch.empty(flat.shape[0], dtype=dtype, device=hidden.device)  # (B*T,)
    step = _hidden_chunk(weight.shape[0])
    w, b = weight.to(dtype), None if bias is None else bias.to(dtype)  # cast once
    for start in range(0, flat.shape[0], step):
        logp = torch.log_softmax(_head(flat[start : start + step], w, b, dtype) / temperature, -1)
        out[start : start + step] = -(logp.exp() * logp).sum(-1)
    return out.view(hidden.shape[:-1])  # (B, T)
