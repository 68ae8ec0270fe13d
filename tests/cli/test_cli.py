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
    assert smollm2.demonstrations == 1000 and smollm2.bf16  # from configs/demo-smollm2.yaml
    assert tiny == DemoConfig()


def test_unknown_preset_is_status_2(capsys):
    assert main(["demo", "--preset", "huge"]) == 2
    assert "'preset' must be one of 'tiny', 'smollm2'" in capsys.readouterr().err
