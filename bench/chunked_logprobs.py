"""Response log-probs at a 128k vocabulary (Llama 3's 128,256 entries) on a small body: the whole logits
(`chunked=False`: a (B, T, V) tensor and its gradient) against the head applied by chunks of positions and
again in the backward (`chunked=True`, `rlhfkit.core.logprobs_from_hidden`). Forward + backward of the
summed log-probs of B x T response tokens, as a PPO or DPO step takes them; seconds (median) and peak RSS.

    .venv/bin/python bench/chunked_logprobs.py [--batch 8] [--length 128] [--vocab 128256] [--repeats 3]

Each way runs in a fresh process (peak RSS from getrusage covers that process alone), fp32, CPU threads as
the machine has them. Also prints the largest difference of the two ways' log-probs and head gradients.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = """
import json, resource, statistics, sys, time
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from rlhfkit.models.forward import response_logprobs

batch, length, vocab, repeats, chunked = (int(a) for a in sys.argv[1:6])
torch.manual_seed(0)
config = LlamaConfig(vocab_size=vocab, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024)
model = LlamaForCausalLM(config)
prompt = 16
ids = torch.randint(vocab, (batch, prompt + length))
mask = torch.ones_like(ids)
times = []
for _ in range(repeats):
    model.zero_grad()
    tick = time.perf_counter()
    logp, _ = response_logprobs(model, ids, mask, prompt, 1.0, chunked=bool(chunked))
    logp.sum().backward()
    times.append(time.perf_counter() - tick)
head = model.get_output_embeddings().weight.grad
torch.save({"logp": logp.detach(), "head_grad": head}, sys.argv[6])
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
print(json.dumps({"seconds": statistics.median(times), "rss_gib": rss}))
"""


def run(args: argparse.Namespace, chunked: bool, out: str) -> dict:
    command = [sys.executable, "-c", CHILD, str(args.batch), str(args.length), str(args.vocab),
               str(args.repeats), str(int(chunked)), out]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    import tempfile
    from pathlib import Path

    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--vocab", type=int, default=128_256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        results = {}
        for chunked in (False, True):
            results[chunked] = run(args, chunked, str(Path(folder) / f"{chunked}.pt"))
        plain, chunks = (torch.load(Path(folder) / f"{c}.pt") for c in (False, True))
    logits_gib = args.batch * args.length * args.vocab * 4 / 2**30
    shape = f"{args.batch} x {args.length} response tokens, vocabulary {args.vocab}"
    print(f"{shape}: fp32 logits {logits_gib:.2f} GiB")
    for chunked, name in ((False, "whole logits"), (True, "by chunks")):
        r = results[chunked]
        timing = f"{r['seconds']:.3f} s (fwd+bwd, median of {args.repeats})"
        print(f"  {name:13s} {timing}  peak RSS {r['rss_gib']:.2f} GiB")
    print(
        f"  max |Δ log-prob| {float((plain['logp'] - chunks['logp']).abs().max()):.2e}, "
        f"max |Δ head gradient| {float((plain['head_grad'] - chunks['head_grad']).abs().max()):.2e}"
    )


if __name__ == "__main__":
    main()
