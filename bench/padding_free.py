"""PPO with padding-free passes (`padding_free`) and a token budget (`max_tokens_per_micro_batch`) against
the padded passes, on CPU: seconds per iteration (rollout / experience / update), the forward + backward of
one training pass alone, and the memory of experience + update (peak RSS above the level before them).

    .venv/bin/python bench/padding_free.py [--iterations 3] [--layers 4] [--hidden 384] [--threads 1]
                                           [--response-length 128] [--budget 512] [--quick]

Setting: a Llama of `--layers` x `--hidden` (untrained; the RM and critic a new scalar head on the same body),
batch 16 episodes, 4 to 60 prompt words, responses cut to lengths drawn uniformly from 1 to
`--response-length` tokens (the same for every mode: an untrained model rarely stops), 2 PPO epochs,
mini-batch 8. The modes run side by side in this process, iteration by iteration, on the same episodes, so
their times compare. Memory: each mode again in a fresh process (one iteration), its RSS sampled during
experience + update, the peak above the level before them (getrusage's peak
is the process's whole life, set-up included; an earlier mode's freed memory would be reused). The rollout
itself does not depend on the mode (it samples with the KV cache).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

WORDS = ["the", "movie", "food", "service", "staff", "place", "price", "was", "is", "really", "quite", "and"]
MODES = ("padded", "padding_free", "padding_free+budget")


def write_prompts(path: Path, count: int, seed: int = 0) -> Path:
    """`count` prompts of 4 to 60 random words: prompts of very different lengths (left padding)."""
    rng = random.Random(seed)
    rows = [
        json.dumps({"prompt": " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 60)))})
        for _ in range(count)
    ]
    path.write_text("\n".join(rows) + "\n")
    return path


def build_models(folder: Path, layers: int, hidden: int) -> tuple[str, str]:
    """(policy folder, reward-model folder): a Llama and a scalar head on the same body."""
    from rlhfkit.models import load_scalar_model, load_tokenizer, tiny_llama, train_tokenizer

    tokenizer = train_tokenizer([" ".join(WORDS)] * 50, vocab_size=300)
    policy = folder / "policy"
    tiny_llama(tokenizer, hidden_size=hidden, num_layers=layers, num_heads=hidden // 64).save_pretrained(
        policy
    )
    tokenizer.save_pretrained(policy)
    tokenizer = load_tokenizer(str(policy))
    reward = folder / "rm"
    load_scalar_model(str(policy), tokenizer).save_pretrained(reward)
    tokenizer.save_pretrained(reward)
    return str(policy), str(reward)


def make_config(folder: Path, mode: str, args: argparse.Namespace) -> object:
    from rlhfkit.config import PPOConfig

    budget = {"max_tokens_per_micro_batch": args.budget} if mode.endswith("+budget") else {}
    return PPOConfig(
        policy=str(folder / "policy"),
        reward_model=str(folder / "rm"),
        prompts=str(folder / "prompts.jsonl"),
        out=str(folder / f"out-{mode}"),
        max_steps=args.iterations,
        batch_size=16,
        mini_batch_size=8,
        ppo_epochs=2,
        response_length=args.response_length,
        max_prompt_length=128,
        temperature=1.0,
        normalize_reward=False,
        bf16=False,
        padding_free=mode != "padded",
        **budget,
    )


def cut(rollout: object, lengths: torch.Tensor, eos: int, pad: int) -> object:
    """`rollout` with row b's response cut to `lengths[b]` tokens, the last one EOS (a stopped response)."""
    width = rollout.response_ids.shape[1]
    keep = torch.arange(width)[None] < lengths[:, None]  # (B, T)
    ids = rollout.response_ids.masked_fill(~keep, pad)
    ids[torch.arange(len(lengths)), lengths - 1] = eos
    return dataclasses.replace(
        rollout,
        response_ids=ids,
        response_mask=keep,
        logprobs=rollout.logprobs.masked_fill(~keep, 0.0),
        stopped=torch.ones_like(rollout.stopped),
    )


def episode_lengths(iteration: int, batch: int, response_length: int) -> torch.Tensor:
    """(B,) response lengths, uniform in 1..response_length, the same for every mode."""
    generator = torch.Generator().manual_seed(1000 + iteration)
    return torch.randint(1, response_length + 1, (batch,), generator=generator)


def iteration(trainer: object, step: int, args: argparse.Namespace) -> tuple[dict[str, float], object, float]:
    """One PPO iteration on cut responses: its phases' seconds, the experience, and the peak memory (GiB)
    of experience + update above the level before them."""
    from rlhfkit.runtime.loop import UpdateGuard

    tokenizer = trainer.roles.tokenizer
    tick = time.perf_counter()
    rollout = trainer.rollout(trainer.prompt_batch(step))
    lengths = episode_lengths(step, rollout.response_ids.shape[0], rollout.response_ids.shape[1])
    rollout = cut(rollout, lengths, tokenizer.eos_token_id, tokenizer.pad_token_id)
    t_rollout = time.perf_counter()
    with PeakRSS() as memory:
        experience, _ = trainer.experience(rollout)
        t_experience = time.perf_counter()
        trainer.update(experience, UpdateGuard("bench", 3))
    t_update = time.perf_counter()
    return (
        {
            "rollout": t_rollout - tick,
            "experience": t_experience - t_rollout,
            "update": t_update - t_experience,
        },
        experience,
        memory.peak,
    )


def training_pass(trainer: object, experience: object, repeats: int) -> float:
    """Median seconds of the forward + backward of one minibatch (its micro-batches under the mode's
    config), the loss weighted as the update weighs it; no optimiser step."""
    from rlhfkit.algorithms.ppo.update import Shares, micro_batch_loss, micro_batch_rows
    from rlhfkit.core import loss_count

    config, rows = trainer.config, torch.arange(trainer.config.mini_batch_size)
    mask = experience.mask[rows]
    tokens, units = mask.sum(), loss_count(mask, config.loss_aggregation)
    times = []
    for _ in range(repeats):
        trainer.roles.trainable.zero_grad()
        tick = time.perf_counter()
        for part in micro_batch_rows(experience, rows, config):
            part_mask = experience.mask[part]
            shares = Shares(part_mask.sum() / tokens, loss_count(part_mask, config.loss_aggregation) / units)
            loss, _ = micro_batch_loss(trainer.opt, experience, part, trainer.kl_ctl.value, config, shares)
            loss.backward()
        times.append(time.perf_counter() - tick)
    return statistics.median(times)


def rss_gib() -> float:
    """This process's resident memory now (VmRSS), GiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


class PeakRSS:
    """The highest VmRSS above the level at entry while the block runs (GiB), sampled every 2 ms by a thread:
    one phase's working memory, which getrusage's process-wide peak cannot tell apart per mode."""

    def __enter__(self) -> PeakRSS:
        self.start, self.peak, self.running = rss_gib(), 0.0, True
        self.thread = threading.Thread(target=self.sample, daemon=True)
        self.thread.start()
        return self

    def sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, rss_gib() - self.start)
            time.sleep(0.002)

    def __exit__(self, *exc: object) -> None:
        self.running = False
        self.thread.join()


def memory_of(mode: str, folder: Path, args: argparse.Namespace) -> None:
    """In a fresh process (memory freed by an earlier mode would be reused, hiding what this one needs):
    the peak RSS above the level before them of one iteration's experience + update; JSON on stdout."""
    from rlhfkit.algorithms.ppo import PPOTrainer

    trainer = PPOTrainer.create(make_config(folder, mode, args))
    _, _, work = iteration(trainer, 1, args)
    print(json.dumps({"work": work}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--response-length", type=int, default=128)
    parser.add_argument(
        "--budget", type=int, default=512, help="max_tokens_per_micro_batch of the budget mode"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timings of the training pass alone")
    parser.add_argument(
        "--quick", action="store_true", help="2 iterations of a 4 x 256 model, responses <= 64"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="CPU threads (1: steady times on cores other work shares)"
    )
    parser.add_argument("--memory-of", choices=MODES, help=argparse.SUPPRESS)  # a child's job
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.iterations, args.layers, args.hidden, args.response_length = 2, 4, 256, 64
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    if args.memory_of:
        memory_of(args.memory_of, Path(args.folder), args)
        return
    from rlhfkit.algorithms.ppo import PPOTrainer
    from rlhfkit.runtime.process import quiet_transformers

    quiet_transformers()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_prompts(folder / "prompts.jsonl", 64)
        build_models(folder, args.layers, args.hidden)
        print(
            f"Llama {args.layers} x {args.hidden}, batch 16, mini-batch 8, 2 epochs, responses "
            f"1..{args.response_length} tokens, prompts 4..60 words, budget {args.budget} tokens, "
            f"{torch.get_num_threads()} threads"
        )
        trainers = {mode: PPOTrainer.create(make_config(folder, mode, args)) for mode in MODES}
        seconds: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
        experiences = {}
        print(f"{'mode':<20} {'iteration':<9} {'rollout':>8} {'experience':>10} {'update':>7} {'total':>7}")
        for step in range(1, args.iterations + 1):
            for mode, trainer in trainers.items():
                phases, experiences[mode], _ = iteration(trainer, step, args)
                seconds[mode].append(phases)
                fill = experiences[mode].attention_mask.float().mean().item()
                print(
                    f"{mode:<20} {step:<9} {phases['rollout']:>8.2f} {phases['experience']:>10.2f} "
                    f"{phases['update']:>7.2f} {sum(phases.values()):>7.2f}   "
                    f"(real tokens {fill:.0%} of the padded batch)",
                    flush=True,
                )
        print(f"\n{'mode':<20} {'mean s/iter':>11} {'exp+update':>10} {'+RSS':>6} {'train pass':>10}")
        base = None
        for mode, trainer in trainers.items():
            rest = slice(1, None) if args.iterations > 1 else slice(None)  # the first iteration warms up
            total = statistics.mean(sum(p.values()) for p in seconds[mode][rest])
            work = statistics.mean(p["experience"] + p["update"] for p in seconds[mode][rest])
            alone = training_pass(trainer, experiences[mode], args.repeats)
            child = [sys.executable, __file__, "--memory-of", mode, "--folder", str(folder)]
            child += [f"--{k.replace('_', '-')}={getattr(args, k)}" for k in CHILD_ARGS]
            done = subprocess.run(child, capture_output=True, text=True, check=True)
            memory = json.loads(done.stdout.strip().splitlines()[-1])
            base = base or (work, alone)
            print(
                f"{mode:<20} {total:>11.2f} {work:>10.2f} {memory['work']:>5.2f}G {alone:>10.3f}   "
                f"(x{base[0] / work:.2f} exp+update, x{base[1] / alone:.2f} "
                "train pass)",
                flush=True,
            )


CHILD_ARGS = ("layers", "hidden", "response_length", "budget", "threads")


if __name__ == "__main__":
    main()
