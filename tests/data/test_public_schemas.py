"""Data as people have it: small fixtures in the exact schemas of the best-known public RLHF datasets, each
through `rlhfkit sft` or `rlhfkit rm` for a step on a tiny model with a chat template (and PPO with plain-text
ptx data), with the flags the "Datasets" table of docs/data.md gives."""

import json

import pytest

from helpers import write_jsonl
from rlhfkit.cli import main
from rlhfkit.data import load_records

STEP = ["batch_size=2", "eval_every=0"]

HH_RLHF = (
    [  # Anthropic/hh-rlhf: the prompt is implicit, the shared beginning through the last assistant marker
        {
            "chosen": "\n\nHuman: Was the movie good?\n\nAssistant: Yes, the acting was great.",
            "rejected": "\n\nHuman: Was the movie good?\n\nAssistant: It was awful, do not go.",
        },
        {
            "chosen": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Any tips?\n\nAssistant: Bake it hot.",
            "rejected": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Any tips?\n\nAssistant: No.",
        },
    ]
    * 3
)


def conversation(user, answer):
    return [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]


H4_ULTRAFEEDBACK = [  # HuggingFaceH4/ultrafeedback_binarized: prompt string, whole conversations, scores
    {
        "prompt": question,
        "prompt_id": str(i),
        "chosen": conversation(question, good),
        "rejected": conversation(question, bad),
        "messages": conversation(question, good),
        "score_chosen": 9.0,
        "score_rejected": 4.5,
    }
    for i, (question, good, bad) in enumerate(
        [("Was the movie good?", "Yes, great.", "No."), ("Is the cafe nice?", "Lovely.", "Awful.")] * 3
    )
]
TRL_ULTRAFEEDBACK = [  # trl-lib/ultrafeedback_binarized: conversations only
    {k: r[k] for k in ("chosen", "rejected", "score_chosen", "score_rejected")} for r in H4_ULTRAFEEDBACK
]
ALPACA = [  # tatsu-lab/alpaca
    {"instruction": "Describe the movie.", "input": "", "output": "It was great."},
    {"instruction": "Summarise the review.", "input": "The pizza was cold.", "output": "Cold pizza."},
] * 3
SHP = [  # stanfordnlp/SHP: labels = 1 when human_ref_A is preferred
    {
        "post_id": str(i),
        "domain": "movies",
        "history": "Was the movie good?",
        "human_ref_A": a,
        "human_ref_B": b,
        "labels": label,
        "score_A": sa,
        "score_B": sb,
    }
    for i, (a, b, label, sa, sb) in enumerate(
        [("Yes, great.", "No.", 1, 12, 3), ("Meh.", "Loved it!", 0, 1, 20)] * 3
    )
]
TEXT = [{"text": "The movie was great and the pizza after it was lovely."}] * 6


@pytest.fixture
def trained_on(monkeypatch):
    """The records `sft`/`rm` read from their data, one list per `load_records` call: what the command trained
    on after the column mapping, the implicit prompt and the label swap."""
    import rlhfkit.algorithms.supervised as supervised

    seen, load = [], supervised.load_records

    def spy(*args, **kwargs):
        seen.append(load(*args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(supervised, "load_records", spy)
    return seen


def run(command, model, data, out, *overrides):
    """One optimiser step of `command` (options first, then field=value overrides)."""
    args = [command, "--model", model, "--data", data, "--out", str(out), "--max-steps", "1"]
    return main([*args, *overrides, *STEP])


def test_hh_rlhf_trains_a_reward_model(tiny_dir, tmp_path):
    assert run("rm", tiny_dir, write_jsonl(tmp_path / "hh.jsonl", HH_RLHF), tmp_path / "rm") == 0
    record = load_records(str(tmp_path / "hh.jsonl"), "preference")[1]
    assert record["prompt"].endswith("Any tips?\n\nAssistant:") and record["chosen"] == " Bake it hot."


def test_ultrafeedback_h4_with_its_split_names_and_score_margins(tiny_dir, tmp_path):
    import datasets

    rows = datasets.Dataset.from_list(H4_ULTRAFEEDBACK)
    datasets.DatasetDict({"train_prefs": rows, "test_prefs": rows.select(range(2))}).save_to_disk(
        tmp_path / "uf"
    )
    folder = str(tmp_path / "uf")
    args = [f"eval_data={folder}@test_prefs", "margin_from_scores=true"]
    assert run("rm", tiny_dir, f"{folder}@train_prefs", tmp_path / "rm", *args) == 0
    record = load_records(f"{folder}@test_prefs", "preference", margin_from_scores=True)[0]
    assert record["prompt"] == conversation("Was the movie good?", "")[:1] and record["margin"] == 4.5


def test_ultrafeedback_trl_lib_conversations_only(tiny_dir, tmp_path, trained_on):
    data = write_jsonl(tmp_path / "uf.jsonl", TRL_ULTRAFEEDBACK)
    assert run("rm", tiny_dir, data, tmp_path / "rm") == 0
    # conversations alone: the shared user turn is the prompt, each side's assistant turn its answer
    assert trained_on[0][:2] == [
        {
            "prompt": [{"role": "user", "content": question}],
            "chosen": [{"role": "assistant", "content": good}],
            "rejected": [{"role": "assistant", "content": bad}],
        }
        for question, good, bad in [
            ("Was the movie good?", "Yes, great.", "No."),
            ("Is the cafe nice?", "Lovely.", "Awful."),
        ]
    ]


def test_alpaca_through_a_column_mapping(tiny_dir, tmp_path, trained_on):
    data = write_jsonl(tmp_path / "alpaca.jsonl", ALPACA)
    columns = ["columns.prompt=instruction,input", "columns.completion=output"]
    assert run("sft", tiny_dir, data, tmp_path / "sft", *columns) == 0
    # instruction and input joined by a blank line; an empty input left out (no trailing blank line)
    assert trained_on[0][:2] == [
        {"prompt": "Describe the movie.", "completion": "It was great."},
        {"prompt": "Summarise the review.\n\nThe pizza was cold.", "completion": "Cold pizza."},
    ]


def test_shp_through_a_column_mapping_with_its_labels_and_scores(tiny_dir, tmp_path, trained_on):
    data = write_jsonl(tmp_path / "shp.jsonl", SHP)
    columns = [
        "columns.prompt=history", "columns.chosen=human_ref_A", "columns.rejected=human_ref_B",
        "columns.label=labels", "columns.score_chosen=score_A", "columns.score_rejected=score_B",
        "margin_from_scores=true",
    ]  # fmt: skip
    assert run("rm", tiny_dir, data, tmp_path / "rm", *columns) == 0
    # labels 1: A preferred, margin 12 - 3; labels 0: B preferred, so the sides and their scores swap,
    # margin score_B - score_A = 20 - 1
    assert trained_on[0][:2] == [
        {"prompt": "Was the movie good?", "chosen": "Yes, great.", "rejected": "No.", "margin": 9.0},
        {"prompt": "Was the movie good?", "chosen": "Loved it!", "rejected": "Meh.", "margin": 19.0},
    ]


def test_csv_rows_through_a_column_mapping(tiny_dir, tmp_path, trained_on):
    path = tmp_path / "alpaca.csv"
    path.write_text("instruction,input,output\nDescribe the movie.,,It was great.\nSay it.,Hi.,Hi.\n" * 2)
    columns = ["columns.prompt=instruction,input", "columns.completion=output"]
    assert run("sft", tiny_dir, str(path), tmp_path / "sft", *columns) == 0
    # an empty CSV cell reads as None: left out of the join; a filled one joined after a blank line
    assert trained_on[0][:2] == [
        {"prompt": "Describe the movie.", "completion": "It was great."},
        {"prompt": "Say it.\n\nHi.", "completion": "Hi."},
    ]


def test_plain_text_is_continued_pretraining(tiny_dir, tmp_path):
    from rlhfkit.data import encode_sft
    from rlhfkit.models import load_tokenizer

    data = write_jsonl(tmp_path / "text.jsonl", TEXT)
    assert run("sft", tiny_dir, data, tmp_path / "sft") == 0
    tokenizer = load_tokenizer(tiny_dir)
    example = encode_sft(load_records(data, "sft")[:1], tokenizer, 512)[0]
    assert example.labels == example.input_ids  # every token is learnt
    assert example.input_ids[-1] == tokenizer.eos_token_id
    short = encode_sft(load_records(data, "sft")[:1], tokenizer, 5)[0]
    assert short.input_ids == example.input_ids[:5]  # a long document is cut at its end


def test_ppo_with_plain_text_ptx_data(rlhf_stack, tmp_path):
    from helpers import ppo_args

    ptx = write_jsonl(tmp_path / "corpus.jsonl", TEXT)
    args = ppo_args(rlhf_stack, tmp_path / "ppo", "--max-steps", "2", "batch_size=4", "mini_batch_size=2")
    assert main([*args, "response_length=6", "ptx_coef=0.5", f"ptx_data={ptx}"]) == 0
    records = [json.loads(line) for line in (tmp_path / "ppo" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["loss/ptx"] > 0 for r in records)


@pytest.mark.parametrize(
    "command, rows, extra, message",
    [
        (
            "rm",
            SHP,
            ["columns.prompt=question"],
            "row 1: column 'question' (mapped to 'prompt' by columns.prompt)",
        ),
        ("rm", [{"chosen": "great", "rejected": "awful"}], [], "row 1: field 'chosen' shares no beginning"),
        (
            "rm",
            TRL_ULTRAFEEDBACK[:1] + [{"chosen": "x", "rejected": "y"}],
            ["margin_from_scores=true"],
            "row 2:",
        ),
        ("sft", [{"text": ""}], [], "row 1: field 'text' is empty"),
    ],
    ids=["unmapped column", "nothing shared", "no scores", "empty text"],
)
def test_bad_rows_name_the_file_row_and_field(tiny_dir, tmp_path, capsys, command, rows, extra, message):
    data = write_jsonl(tmp_path / "bad.jsonl", rows)
    out = tmp_path / "out"
    assert run(command, tiny_dir, data, out, *extra) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and "bad.jsonl" in error and len(error.splitlines()) == 1, error
    assert not out.exists()


def test_ptx_rows_are_drawn_lazily_and_a_row_too_long_is_drawn_again(rlhf_stack, tiny_tokenizer, tmp_path):
    import torch

    from rlhfkit.algorithms.ppo.update import ptx_sampler
    from rlhfkit.config import ColumnsConfig, PPOConfig
    from rlhfkit.errors import UsageError

    long = {"prompt": "the movie was", "completion": " great" * 200}  # its completion alone passes 64 tokens
    # the bad row after the 256 rows the start-up check encodes: only LazyRecords' own pass can find it
    corpus = write_jsonl(
        tmp_path / "mixed.jsonl", [{"content": "a short document."}] * 300 + [{"content": long}]
    )
    sft, rm, prompts = rlhf_stack
    data = write_jsonl(tmp_path / "sft.jsonl", [long, {"text": "fine."}] * 10)
    config = PPOConfig(
        policy=sft, reward_model=rm, prompts=prompts, out=str(tmp_path / "o"), ptx_coef=1.0,
        mini_batch_size=4, batch_size=8, ptx_max_length=64, ptx_data=data,
    )  # fmt: skip
    sample = ptx_sampler(config, tiny_tokenizer, torch.Generator().manual_seed(0))
    for _ in range(5):
        batch = sample()
        assert len(batch) == 4 and all(
            len(e.input_ids) <= 64 for e in batch
        )  # the long rows were drawn again
    only_long = PPOConfig(**{**config.__dict__, "ptx_data": write_jsonl(tmp_path / "long.jsonl", [long] * 3)})
    with pytest.raises(UsageError, match="no row of the first 256 fits ptx_max_length=64"):
        ptx_sampler(only_long, tiny_tokenizer, torch.Generator())
    mapped = PPOConfig(
        **{**config.__dict__, "ptx_data": corpus, "ptx_columns": ColumnsConfig(text="content")}
    )
    with pytest.raises(UsageError, match="mixed.jsonl row 301: field 'text' must be a string, got dict"):
        ptx_sampler(mapped, tiny_tokenizer, torch.Generator())  # every row is checked at start-up


def test_eval_and_label_read_prompts_through_a_column_mapping(rlhf_stack, tmp_path):
    questions = write_jsonl(tmp_path / "q.jsonl", [{"question": "the movie was"}, {"question": "the pizza"}])
    sft = rlhf_stack[0]
    common = ["columns.prompt=question", "response_length=4", "batch_size=2"]
    assert (
        main(["eval", "--model", sft, "--prompts", questions, "--gold", "helpers:great_reward", *common]) == 0
    )
    out = tmp_path / "pairs.jsonl"
    args = [
        "label",
        "--policy",
        sft,
        "--prompts",
        questions,
        "--gold",
        "helpers:great_reward",
        "--out",
        str(out),
    ]
    assert main([*args, *common]) == 0
    prompts = {json.loads(line)["prompt"] for line in out.read_text().splitlines()}
    assert prompts and prompts <= {"the movie was", "the pizza"}  # identical pairs are left out


def test_a_ptx_corpus_of_mostly_long_rows_fills_its_batches_from_rows_known_to_fit(
    rlhf_stack, tiny_tokenizer, tmp_path, caplog
):
    """One short row among 300 too long for ptx_max_length: 10 draws of 4 rows almost surely miss it. The
    batch is filled from the rows start-up found to fit (row 1 alone) instead of a UsageError mid-training,
    which would skip the checkpoint a clean stop writes."""
    import torch

    from rlhfkit.algorithms.ppo.update import ptx_sampler
    from rlhfkit.config import PPOConfig
    from rlhfkit.data import encode_sft

    long = {"prompt": "the movie was", "completion": " great" * 200}  # its completion alone passes 64 tokens
    data = write_jsonl(tmp_path / "long.jsonl", [{"text": "fine."}] + [long] * 299)
    sft, rm, prompts = rlhf_stack
    config = PPOConfig(
        policy=sft, reward_model=rm, prompts=prompts, out=str(tmp_path / "o"), ptx_coef=1.0,
        mini_batch_size=4, batch_size=8, ptx_max_length=64, ptx_data=data,
    )  # fmt: skip
    sample = ptx_sampler(config, tiny_tokenizer, torch.Generator().manual_seed(0))
    short = encode_sft([{"text": "fine."}], tiny_tokenizer, 64)[0]
    for _ in range(2):
        batch = sample()
        assert [e.input_ids for e in batch] == [short.input_ids] * 4
    warnings = [r.message for r in caplog.records if "keep being longer" in r.message]
    assert len(warnings) == 1 and "filled from the 1 rows of the first 256 that fit" in warnings[0]
