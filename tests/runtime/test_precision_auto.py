"""`bf16: auto` and `model_dtype: auto`: bf16 where this machine computes it faster, fp32 elsewhere, decided
once per process from the CPU's features (or a short timing), and settled when a config is made."""

import dataclasses
import logging

import pytest

from rlhfkit.cli import main
from rlhfkit.config import DemoConfig, PPOConfig, SFTConfig, load_config, save_config
from rlhfkit.config.loading import preset
from rlhfkit.errors import ConfigError, UsageError
from rlhfkit.runtime import process
from rlhfkit.runtime.process import (
    AUTO_BF16_VARIABLE,
    auto_bf16,
    cpu_bf16_from_features,
    cpu_bf16_from_timing,
    cpu_bf16_verdict,
    resolve_precision,
)

# /proc/cpuinfo lines as the kernel writes them (shortened)
ZEN4 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n"
SAPPHIRE_RAPIDS = "flags\t\t: fpu avx512f amx_tile amx_bf16 amx_int8\n"
XEON_AVX512 = "flags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_vnni\n"  # issue 23's: bf16 3.5x slower
GRAVITON3 = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\nCPU implementer\t: 0x41\n"
CORTEX_A72 = "processor\t: 0\nFeatures\t: fp asimd evtstrm crc32 cpuid\n"
POWER9 = "processor\t: 0\ncpu\t\t: POWER9 (architected)\n"


def never_timed():
    raise AssertionError("the features tell: nothing to time")


@pytest.fixture
def fresh(monkeypatch):
    """No pinned value, no decision or warning remembered from earlier tests (and none left for later)."""
    monkeypatch.delenv(AUTO_BF16_VARIABLE, raising=False)
    caches = (process.auto_bf16_here, process.this_cpu_bf16_verdict, process._warn_once)
    for cache in caches:
        cache.cache_clear()
    yield monkeypatch
    for cache in caches:
        cache.cache_clear()


def on_cpu(monkeypatch, verdict):
    """This process on a CPU whose bf16 verdict is `verdict`."""
    monkeypatch.setattr(process, "on_cuda", lambda: None)
    monkeypatch.setattr(process, "this_cpu_bf16_verdict", lambda: (verdict, "a test CPU"))


# ------------------------------------------------------------------------------- the pure decisions


@pytest.mark.parametrize(
    ("cpuinfo", "verdict", "named"),
    [
        (ZEN4, True, "avx512_bf16"),
        (SAPPHIRE_RAPIDS, True, "amx_bf16"),
        (XEON_AVX512, False, "no avx512_bf16"),
        (GRAVITON3, True, "bf16"),
        (CORTEX_A72, False, "no bf16"),
        (POWER9, None, "unknown"),
        ("", None, "unknown"),
        (None, None, "unknown"),
    ],
    ids=["zen4", "amx", "xeon-avx512", "graviton3", "cortex-a72", "power9", "empty", "no-cpuinfo"],
)
def test_the_cpus_features_decide(cpuinfo, verdict, named):
    found, why = cpu_bf16_from_features(cpuinfo)
    assert found is verdict and named in why


def test_sve_alone_is_not_native_bf16():
    assert cpu_bf16_from_features("Features\t: fp asimd sve sve2\n")[0] is False


def test_the_features_are_read_before_any_timing():
    assert cpu_bf16_verdict(ZEN4, 1, never_timed)[0] is True
    assert cpu_bf16_verdict(XEON_AVX512, 1, never_timed)[0] is False


@pytest.mark.parametrize(("fp32", "bf16", "verdict"), [(2.6e-3, 1.2e-3, True), (1.0e-3, 3.5e-3, False)])
def test_unknown_features_are_timed(fp32, bf16, verdict):
    found, why = cpu_bf16_verdict(POWER9, 1, lambda: (fp32, bf16))
    assert found is verdict and "512x512 matmul" in why
    assert cpu_bf16_from_timing(fp32, bf16)[0] is verdict


def test_several_processes_do_not_time_so_they_agree():
    found, why = cpu_bf16_verdict(None, 2, never_timed)
    assert found is None and "2 processes" in why


def test_the_timing_runs_and_leaves_the_thread_count():
    threads = process.torch.get_num_threads()
    fp32, bf16 = process.time_matmuls(size=64, repeats=1)
    assert fp32 > 0 and bf16 > 0 and process.torch.get_num_threads() == threads


def cpu(verdict):
    return lambda: (verdict, "a test CPU")


@pytest.mark.parametrize(
    ("environ", "cuda", "cuda_bf16", "cpu_verdict", "chosen"),
    [
        ({}, None, False, True, True),  # a CPU with native bf16
        ({}, None, False, False, False),  # a CPU without
        ({}, None, False, None, False),  # cannot tell: fp32
        ({}, "NVIDIA H100", True, False, True),  # CUDA decides, not the host CPU
        ({}, "Tesla V100", False, True, False),  # a GPU that would only emulate bf16
        ({AUTO_BF16_VARIABLE: "false"}, "NVIDIA H100", True, True, False),  # pinned wins everywhere
        ({AUTO_BF16_VARIABLE: "1"}, None, False, False, True),
    ],
)
def test_what_auto_means(environ, cuda, cuda_bf16, cpu_verdict, chosen):
    assert auto_bf16(environ, cuda, cuda_bf16, cpu(cpu_verdict))[0] is chosen


def test_a_bad_pinned_value_is_a_usage_error():
    with pytest.raises(UsageError, match=f"{AUTO_BF16_VARIABLE} must be true or false, got 'maybe'"):
        auto_bf16({AUTO_BF16_VARIABLE: "maybe"}, None, False, cpu(True))


@pytest.mark.parametrize(
    ("bf16", "model_dtype", "auto", "expected"),
    [
        ("auto", "auto", True, (True, "bfloat16")),
        ("auto", "auto", False, (False, "float32")),
        ("auto", "float32", True, (True, "float32")),  # an explicit dtype stays
        (False, "auto", True, (False, "float32")),  # model_dtype follows the run's bf16, not the machine
        (True, "auto", False, (True, "bfloat16")),
        (True, "float32", False, (True, "float32")),
        (False, "bfloat16", True, (False, "bfloat16")),
    ],
)
def test_resolve_precision(bf16, model_dtype, auto, expected):
    assert resolve_precision(bf16, model_dtype, lambda: auto, lambda: False) == expected


@pytest.mark.parametrize("bad", ["maybe", 1, None])
def test_resolve_precision_refuses_other_values(bad):
    with pytest.raises(ConfigError, match="bf16 must be true, false or 'auto'"):
        resolve_precision(bad, "auto", lambda: True, lambda: False)


# ------------------------------------------------------------------------- once per process, logged


def ppo_config(**values):
    return PPOConfig(policy="p", prompts="q", out="o", reward_model="r", **values)


def test_auto_is_decided_and_logged_once(fresh, caplog):
    on_cpu(fresh, True)
    with caplog.at_level(logging.INFO, logger="rlhfkit"):
        first, second = ppo_config(), SFTConfig(model="m", data="d", out="o")
    assert (first.bf16, first.model_dtype, second.bf16, second.model_dtype) == (
        True,
        "bfloat16",
        True,
        "bfloat16",
    )
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["bf16=auto chose bf16: a test CPU"]


def test_a_cpu_without_native_bf16_gets_fp32(fresh, caplog):
    on_cpu(fresh, False)
    with caplog.at_level(logging.INFO, logger="rlhfkit"):
        config = ppo_config()
    assert (config.bf16, config.model_dtype) == (False, "float32")
    assert [r.getMessage() for r in caplog.records] == ["bf16=auto chose fp32: a test CPU"]


def test_a_pinned_auto_is_not_logged(fresh, caplog):
    on_cpu(fresh, True)
    fresh.setenv(AUTO_BF16_VARIABLE, "false")
    with caplog.at_level(logging.INFO, logger="rlhfkit"):
        config = ppo_config()
    assert (config.bf16, config.model_dtype) == (False, "float32") and not caplog.records


def test_explicit_bf16_on_a_slow_cpu_warns_once(fresh, caplog):
    on_cpu(fresh, False)
    with caplog.at_level(logging.INFO, logger="rlhfkit"):
        configs = [
            ppo_config(bf16=True),
            ppo_config(bf16=True),
            SFTConfig(model="m", data="d", out="o", bf16=True),
        ]
    assert all(c.bf16 is True for c in configs)  # still what was asked
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "slower than fp32" in warnings[0].getMessage()


@pytest.mark.parametrize("verdict", [True, None])
def test_explicit_bf16_where_it_is_not_slower_does_not_warn(fresh, caplog, verdict):
    on_cpu(fresh, verdict)
    with caplog.at_level(logging.INFO, logger="rlhfkit"):
        ppo_config(bf16=True)
        ppo_config(bf16=False)
    assert not caplog.records


# --------------------------------------------------------------------------- configs and the CLI


def test_true_and_false_are_as_before(fresh):
    on_cpu(fresh, True)
    for text, value in (("true", True), ("false", False), ("yes", True), ("0", False)):
        config = load_config(SFTConfig, overrides=["model=m", "data=d", "out=o", f"bf16={text}"])
        assert config.bf16 is value
        assert config.model_dtype == ("bfloat16" if value else "float32")  # the default, auto, follows


def test_auto_from_the_command_line_and_yaml(fresh, tmp_path):
    on_cpu(fresh, True)
    config = load_config(SFTConfig, overrides=["model=m", "data=d", "out=o", "bf16=auto", "model_dtype=auto"])
    assert (config.bf16, config.model_dtype) == (True, "bfloat16")
    (tmp_path / "c.yaml").write_text("model: m\ndata: d\nout: o\nbf16: auto\nmodel_dtype: float32\n")
    config = load_config(SFTConfig, tmp_path / "c.yaml")
    assert (config.bf16, config.model_dtype) == (True, "float32")


def test_config_yaml_records_what_the_run_used_and_loads_back(fresh, tmp_path):
    """A resumed or repeated run reads config.yaml's settled values: the same precision, whatever auto would
    say where it is read."""
    on_cpu(fresh, True)
    config = ppo_config()
    save_config(config, tmp_path / "config.yaml")
    text = (tmp_path / "config.yaml").read_text()
    assert "bf16: true\n" in text and "model_dtype: bfloat16\n" in text
    on_cpu(fresh, False)
    assert load_config(PPOConfig, tmp_path / "config.yaml") == config


def test_replace_keeps_the_settled_values(fresh):
    on_cpu(fresh, True)
    config = ppo_config()
    on_cpu(fresh, False)  # a later decision cannot change a made config
    assert dataclasses.replace(config, kl_coef=0.1).bf16 is True


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("bf16=maybe", "config key 'bf16' must be one of true, false, 'auto', got 'maybe'"),
        (
            "model_dtype=half",
            "config key 'model_dtype' must be one of 'auto', 'float32', 'bfloat16', got 'half'",
        ),
    ],
)
def test_a_bad_value_is_one_line_status_2(capsys, tmp_path, override, message):
    out = tmp_path / "run"
    status = main(["sft", "--model", "m", "--data", "d", "--out", str(out), override])
    assert status == 2 and not out.exists()
    assert capsys.readouterr().err == f"rlhfkit sft: error: {message}\n"


def test_a_bad_value_from_python_is_refused():
    with pytest.raises(ConfigError, match="bf16 must be true, false or 'auto', got 'yes'"):
        ppo_config(bf16="yes")
    with pytest.raises(ConfigError, match="bf16 must be true, false or 'auto', got 1"):
        DemoConfig(bf16=1)


def test_the_demos_pass_auto_to_their_stages(fresh):
    """The tiny demo computes in fp32 on every machine (its numbers do not depend on the CPU); `auto` at the
    demo's level reaches each stage, which settles it as `rlhfkit ppo` would."""
    on_cpu(fresh, True)
    assert DemoConfig().bf16 is False
    demo = load_config(DemoConfig, overrides=["bf16=auto"])
    assert demo.bf16 == "auto"
    stage = dataclasses.replace(demo.stage3("ppo"), policy="p", prompts="q", out="o", reward_model="r")
    stage = dataclasses.replace(stage, bf16=demo.bf16, eval_prompts=None, seed=0, overwrite=True)
    assert (stage.bf16, stage.model_dtype) == (True, "bfloat16")
    assert preset("smollm2")["bf16"] == "auto"


def test_help_shows_auto_as_the_default(capsys):
    with pytest.raises(SystemExit):
        main(["ppo", "--help"])
    text = capsys.readouterr().out
    assert "bf16 (bool | 'auto', default 'auto'): bf16 autocast" in text
    assert "model_dtype (Literal['auto', 'float32', 'bfloat16'], default 'auto')" in text
