import os

# No network here: hub look-ups must fail at once instead of retrying for a minute.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# `bf16: auto` means fp32 in the tests whatever the CPU: their numbers must not depend on it
os.environ.setdefault("RLHFKIT_AUTO_BF16", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

DTYPES = [torch.float32, torch.float64]
# Tight tolerances per dtype for values worked out by hand.
TOL = {torch.float32: 1e-6, torch.float64: 1e-12}


@pytest.fixture(params=DTYPES, ids=["fp32", "fp64"])
def dtype(request):
    return request.param


@pytest.fixture
def tol(dtype):
    return TOL[dtype]


# ------------------------------------------------------------------------ tiny models on disk

from helpers import sentiment_rows  # noqa: E402


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A saved tiny Llama + tokenizer trained on the sentiment corpus (pad distinct from EOS)."""
    from rlhfkit.models import tiny_llama, train_tokenizer

    texts = [r["prompt"] + r["completion"] for r in sentiment_rows(400)] + ["hi there, how are you?"]
    tokenizer = train_tokenizer(texts, vocab_size=400)
    folder = tmp_path_factory.mktemp("tiny")
    tiny_llama(tokenizer, hidden_size=64, num_layers=2, num_heads=4).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_dir):
    from rlhfkit.models import load_tokenizer

    return load_tokenizer(tiny_dir)


@pytest.fixture(scope="session")
def rlhf_stack(tiny_dir, tmp_path_factory):
    """(sft folder, rm folder, prompts file): a tiny SFT model and an RM that likes the word `great`."""
    from helpers import great_rows, prompt_rows, write_jsonl
    from rlhfkit.algorithms.reward import train_reward_model
    from rlhfkit.algorithms.sft import sft
    from rlhfkit.config import OptimConfig, RewardConfig, SFTConfig

    folder = tmp_path_factory.mktemp("stack")
    sft_dir = sft(
        SFTConfig(
            model=tiny_dir,
            data=write_jsonl(folder / "sft.jsonl", sentiment_rows(400)),
            out=str(folder / "sft"),
            max_steps=60,
            batch_size=16,
            optim=OptimConfig(lr=3e-3),
        )
    )
    rm_dir = train_reward_model(
        RewardConfig(
            model=str(sft_dir),
            data=write_jsonl(folder / "pairs.jsonl", great_rows(300)),
            out=str(folder / "rm"),
            max_steps=30,
            batch_size=16,
            optim=OptimConfig(lr=1e-3),
        )
    )
    prompts = write_jsonl(folder / "prompts.jsonl", prompt_rows(200, seed=5))
    return str(sft_dir), str(rm_dir), prompts


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tiny_dir, tmp_path_factory):
    """A saved tiny GPT-2 + the tokenizer of `tiny_dir`, randomly initialised, no dropout.

    GPT-2 adds a learnt embedding per absolute position, so unlike RoPE (blind to a uniform shift) its
    outputs move when `position_ids` are missing or shifted by left padding: position tests run on both.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    from rlhfkit.models import load_tokenizer

    tokenizer = load_tokenizer(tiny_dir)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_embd=64,
        n_layer=2,
        n_head=4,
        n_positions=512,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        summary_first_dropout=0.0,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_gpt2")
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)
