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
