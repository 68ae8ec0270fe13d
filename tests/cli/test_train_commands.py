"""`rlhfkit sft` and `rlhfkit rm` from the command line: a real run, and every kind of bad input."""

import json
import subprocess
import sys

import pytest

from helpers import preference_rows, sentiment_rows, write_jsonl
from rlhfkit.cli import main

GOOD_SFT = {"prompt": "the movie was", "completion": " great."}
GOOD_PAIR = {"prompt": "the movie was", "chosen": " great.", "rejected": " awful."}


def jsonl(*rows):
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


# (command, file content or None for a missing file, extra arguments, text the one-line error must contain)
BAD_INPUTS = {
    "missing file": ("sft", None, [], "data.jsonl: file does not exist"),
    "empty file": ("sft", "", [], "data.jsonl: no rows"),
    "row not JSON": ("sft", jsonl(GOOD_SFT, "{oops"), [], "data.jsonl row 2: not valid JSON"),
    "missing field": (
        "sft",
        jsonl(GOOD_SFT, {"prompt": "x"}),
        [],
        "data.jsonl row 2: field 'completion' is missing",
    ),
    "wrong type": (
        "sft",
        jsonl({"prompt": ["x"], "completion": "y"}),
        [],
        "data.jsonl row 1: field 'prompt' must be a string, got list",
    ),
    "empty string": (
        "sft",
        jsonl(GOOD_SFT, GOOD_SFT, {"prompt": "x", "completion": ""}),
        [],
        "data.jsonl row 3: field 'completion' is empty",
    ),
    "chosen == rejected": (
        "rm",
        jsonl(GOOD_PAIR, {**GOOD_PAIR, "rejected": " great."}),
        [],
        "data.jsonl row 2: field 'rejected' is identical to 'chosen'",
    ),
    "rm row missing chosen": (
        "rm",
        jsonl({"prompt": "p", "rejected": "r"}),
        [],
        "data.jsonl row 1: field 'chosen' is missing",
    ),
    "bad margin": (
        "rm",
        jsonl({**GOOD_PAIR, "margin": "big"}),
        [],
        "data.jsonl row 1: field 'margin' must be a number",
    ),
    "bad config value": (
        "sft",
        jsonl(GOOD_SFT),
        ["optim.lr=fast"],
        "config key 'optim.lr' expects float, got 'fast'",
    ),
    "unknown config key": ("rm", jsonl(GOOD_PAIR), ["learning_rate=1"], "unknown config key 'learning_rate'"),
    "zero steps": ("sft", jsonl(GOOD_SFT), ["--max-steps", "0"], "max_steps must be > 0"),
    "missing model folder": (
        "sft",
        jsonl(GOOD_SFT),
        ["--model", "no/such/folder"],
        "no/such/folder: model folder does not exist",
    ),
    "hub model offline": (
        "rm",
        jsonl(GOOD_PAIR),
        ["--model", "someone/model"],
        "someone/model: could not load",
    ),
    "out is a file": ("sft", jsonl(GOOD_SFT), ["--out", "data.jsonl"], "is a file, not a folder"),
    "row not an object": ("sft", jsonl([1, 2]), [], "data.jsonl row 1: expected an object with named fields"),
    "missing eval data": (
        "rm",
        jsonl(GOOD_PAIR),
        ["eval_data=nowhere/eval.jsonl"],
        "nowhere/eval.jsonl: file does not exist",
    ),
    "bad truncation": ("sft", jsonl(GOOD_SFT), ["truncation=middle"], "must be one of 'left', 'drop'"),
    "bad float": (
        "rm",
        jsonl(GOOD_PAIR),
        ["eval_fraction=most"],
        "'eval_fraction' expects float, got 'most'",
    ),
    "missing config file": (
        "sft",
        jsonl(GOOD_SFT),
        ["--config", "no/such.yaml"],
        "no/such.yaml does not exist",
    ),
    "checkpoints without --resume": (
        "sft",
        jsonl(GOOD_SFT),
        ["+checkpoint"],
        "pass --resume to continue it or --overwrite to start again",
    ),
    "resume without checkpoints": ("rm", jsonl(GOOD_PAIR), ["--resume"], "has no complete checkpoint"),
    "finished run": ("sft", jsonl(GOOD_SFT), ["+finished"], "holds a finished run; pass --overwrite"),
    "dpo unknown loss_type": (
        "dpo",
        jsonl(GOOD_PAIR),
        ["loss_type=kto"],
        "'loss_type' must be one of 'sigmoid'",
    ),
    "dpo beta 0": ("dpo", jsonl(GOOD_PAIR), ["beta=0"], "beta must be > 0"),
    "dpo label smoothing": ("dpo", jsonl(GOOD_PAIR), ["label_smoothing=0.5"], "must be in [0, 0.5)"),
    "dpo simpo with a reference": (
        "dpo",
        jsonl(GOOD_PAIR),
        ["loss_type=simpo", "reference=x"],
        "simpo uses no reference model",
    ),
    "dpo pair fails validation": (
        "dpo",
        jsonl(GOOD_PAIR, {**GOOD_PAIR, "rejected": " great."}),
        [],
        "data.jsonl row 2: field 'rejected' is identical to 'chosen'",
    ),
}


def snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in folder.rglob("*")}


def test_the_table_has_at_least_20_cases():
    assert len(BAD_INPUTS) >= 20


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_one_line_status_2_and_the_output_folder_is_untouched(case, tiny_dir, tmp_path, capsys):
    command, content, extra, message = BAD_INPUTS[case]
    data = tmp_path / "data.jsonl"
    if content is not None:
        data.write_text(content)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("earlier work")
    if "+checkpoint" in extra:  # an unfinished run's checkpoint
        (out / "checkpoints" / "step-00000004").mkdir(parents=True)
        (out / "checkpoints" / "step-00000004" / "COMPLETE").write_text("{}")
    if "+finished" in extra:
        (out / "rlhfkit.json").write_text('{"finished": true}')
    extra = [str(data) if arg == "data.jsonl" else arg for arg in extra if not arg.startswith("+")]
    before = snapshot(out)
    args = [command, "--model", tiny_dir, "--data", str(data), "--out", str(out), *extra]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and "Traceback" not in err, err
    assert err.startswith(f"rlhfkit {command}: error: ")
    assert snapshot(out) == before


def test_a_new_output_folder_is_not_created_on_bad_input(tiny_dir, tmp_path):
    out = tmp_path / "new"
    assert main(["sft", "--model", tiny_dir, "--data", str(tmp_path / "nope.jsonl"), "--out", str(out)]) == 2
    assert not out.exists()


def test_sft_then_rm_from_the_command_line(tiny_dir, tmp_path):
    """A real process: exit 0, folders written; then a second run into the finished folder is refused."""
    sft_data = write_jsonl(tmp_path / "sft.jsonl", sentiment_rows(64))
    pairs = write_jsonl(tmp_path / "pairs.jsonl", preference_rows(64))
    sft_out, rm_out = tmp_path / "sft", tmp_path / "rm"
    run = [sys.executable, "-m", "rlhfkit.cli"]
    done = subprocess.run(
        [
            *run,
            "sft",
            "--model",
            tiny_dir,
            "--data",
            sft_data,
            "--out",
            str(sft_out),
            "--max-steps",
            "3",
            "batch_size=8",
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert (sft_out / "rlhfkit.json").is_file() and (sft_out / "model.safetensors").is_file()
    done = subprocess.run(
        [
            *run,
            "rm",
            "--model",
            str(sft_out),
            "--data",
            pairs,
            "--out",
            str(rm_out),
            "--epochs",
            "1",
            "batch_size=16",
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    lines = (rm_out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 4  # 64 pairs, 6 held out (10 %): ceil(58 / 16) = 4 steps in one epoch
    again = subprocess.run(
        [*run, "rm", "--model", str(sft_out), "--data", pairs, "--out", str(rm_out)],
        capture_output=True,
        text=True,
    )
    assert again.returncode == 2
    assert "holds a finished run; pass --overwrite" in again.stderr and "Traceback" not in again.stderr
    assert (rm_out / "metrics.jsonl").read_text().splitlines() == lines
