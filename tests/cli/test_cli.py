import subprocess
import sys

import pytest

from rlhfkit.cli import main


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "rlhfkit.cli", *args], capture_output=True, text=True)


def test_help_lists_every_command():
    out = run_cli("--help")
    assert out.returncode == 0
    for command in ("sft", "rm", "label", "ppo", "eval", "demo"):
        assert command in out.stdout


def test_command_help_documents_fields_with_defaults(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["ppo", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "kl_coef (float, default 0.05)" in text
    assert "policy (str, required)" in text


def test_section_defaults_are_the_owners(capsys):
    with pytest.raises(SystemExit):
        main(["rm", "--help"])
    assert "optim.lr (float, default 1e-05)" in capsys.readouterr().out  # RewardConfig's, not OptimConfig's


def test_bad_override_is_one_line_status_2_without_traceback():
    out = run_cli(
        "ppo", "--policy", "a", "--reward-model", "b", "--prompts", "c", "--out", "d", "kl_coef=big"
    )
    assert out.returncode == 2
    assert out.stderr.strip() == "rlhfkit ppo: error: config key 'kl_coef' expects float, got 'big'"
    assert "Traceback" not in out.stderr


def test_missing_config_file_is_status_2(tmp_path, capsys):
    assert main(["demo", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml does not exist" in capsys.readouterr().err


def test_demo_preset_values_sit_under_the_users(monkeypatch):
    from rlhfkit import cli
    from rlhfkit.config import DemoConfig

    seen = []
    monkeypatch.setitem(cli.RUNNERS, "demo", lambda config: seen.append(config) or 0)
    assert main(["demo", "--preset", "smollm2", "ppo_steps=3"]) == 0
    assert main(["demo"]) == 0
    smollm2, tiny = seen
    assert smollm2.ppo_steps == 3  # the user's override wins
    # from src/rlhfkit/configs/demo-smollm2.yaml
    assert smollm2.demonstrations == 1000 and smollm2.bf16 == "auto"
    assert tiny == DemoConfig()


def test_unknown_preset_is_status_2(capsys):
    assert main(["demo", "--preset", "huge"]) == 2
    assert "'preset' must be one of 'tiny', 'smollm2'" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["sft", "rm", "label", "ppo", "eval", "demo"])
def test_overrides_are_read_anywhere_among_the_options(command):
    """`field=value` before, between and after options: argparse alone stops reading the positional
    overrides at the first option after them ("unrecognized arguments")."""
    from rlhfkit.cli import parse_arguments

    args = parse_arguments([command, "seed=1", "--out", "O", "seed=2", "--config", "c.yaml", "a.b=3"])
    assert args.command == command and args.out == "O" and args.config == "c.yaml"
    assert args.overrides == ["seed=1", "seed=2", "a.b=3"]  # in the order given: the last one wins


def test_the_issues_ppo_line_sets_every_field(monkeypatch):
    from rlhfkit import cli

    seen = []
    monkeypatch.setitem(cli.RUNNERS, "ppo", lambda config: seen.append(config) or 0)
    argv = ["ppo", "--policy", "P", "max_steps=1", "--prompts", "F", "--out", "O", "batch_size=8"]
    assert main([*argv, "--reward-function", "m:f", "mini_batch_size=4", "--reward-function", "m:g"]) == 0
    config = seen[0]
    assert (config.policy, config.prompts, config.out) == ("P", "F", "O")
    assert (config.max_steps, config.batch_size, config.mini_batch_size) == (1, 8, 4)
    assert tuple(config.reward_functions) == ("m:f", "m:g")


def test_an_unknown_option_is_still_refused_with_status_2():
    out = run_cli("ppo", "--policy", "P", "max_steps=1", "--no-such-option")
    assert out.returncode == 2 and "unrecognized arguments: --no-such-option" in out.stderr


def test_the_preset_file_demo_help_names_exists_in_the_repository_and_the_package(capsys):
    import re
    from importlib.resources import files
    from pathlib import Path

    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    named = re.findall(r"src/rlhfkit/configs/[\w.-]+\.yaml", capsys.readouterr().out)
    assert named == ["src/rlhfkit/configs/demo-smollm2.yaml"]
    assert (Path(__file__).resolve().parents[2] / named[0]).is_file()  # from the repository's root
    assert (files("rlhfkit") / named[0].removeprefix("src/rlhfkit/")).is_file()  # what --preset reads
