import pytest
import torch

from cards import check_card
from helpers import preference_rows, write_jsonl
from rlhfkit.algorithms.reward import train_reward_model
from rlhfkit.config import OptimConfig, RewardConfig
from rlhfkit.data import encode_pairs, load_records, pad
from rlhfkit.models import load_tokenizer, sequence_scores
from rlhfkit.runtime.metrics import read_metrics
from rlhfkit.runtime.outputs import read_run_file


@pytest.fixture(scope="module")
def rm_run(tiny_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("rm")
    data = write_jsonl(folder / "train.jsonl", preference_rows(300, seed=1))
    held_out = write_jsonl(folder / "eval.jsonl", preference_rows(100, seed=2))
    config = RewardConfig(
        model=tiny_dir,
        data=data,
        eval_data=held_out,
        out=str(folder / "out"),
        max_steps=30,
        batch_size=16,
        optim=OptimConfig(lr=1e-3),
        eval_every=10,
    )
    return config, train_reward_model(config)


def test_rm_learns_the_preference(rm_run):
    _, out = rm_run
    metrics = read_metrics(out / "metrics.jsonl")
    assert metrics[0]["loss"] > 0.5  # a new head starts near ln 2 = 0.69
    final = [m for m in metrics if "eval/accuracy" in m][-1]
    assert final["eval/accuracy"] >= 0.95
    assert final["eval/margin"] > 0


def test_rm_folder_reloads_with_the_same_scores(rm_run):
    from transformers import AutoModelForSequenceClassification

    config, out = rm_run
    tokenizer = load_tokenizer(str(out))
    pairs = encode_pairs(load_records(config.eval_data, "preference")[:8], tokenizer, 64)
    ids, mask = pad([p.chosen for p in pairs], tokenizer.pad_token_id)
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    with torch.no_grad():
        ours = sequence_scores(model, ids, mask)
        # transformers' own pooling (last non-pad token) of the reloaded folder agrees
        theirs = model(input_ids=ids, attention_mask=mask).logits.squeeze(-1)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_rm_writes_normalisation_stats(rm_run):
    _, out = rm_run
    run = read_run_file(out)
    stats = run["reward_stats"]
    assert run["finished"] and run["command"] == "rm"
    assert stats["samples"] == 300 and stats["std"] > 0
    assert run["final"]["eval/accuracy"] >= 0.95
    card = check_card(out, ["rlhfkit", "reward-model"], run["final"])  # the model card, with those numbers
    assert card["pipeline_tag"] == "text-classification"
