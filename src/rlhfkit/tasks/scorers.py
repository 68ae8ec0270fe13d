"""Scorers: one interface for a score that comes from a Python function or from a reward-model folder.

A gold reward (`label --gold`, `eval --gold`) and a monitor (`monitor_functions`, `monitor_models` of `ppo`
and `dpo`) is either. A function is `module:function` in every form `reward_functions` take (plain,
`@rlhfkit.batched`, `async def`, with data columns). A reward-model folder is one saved by `rlhfkit rm`, or
any sequence-classification folder with one label: it reads each prompt and response re-encoded with its own
tokenizer and template, exactly as `rm` trained on them (`rlhfkit.data.encode.scored_sequence`), its raw score
at the last token (`rlhfkit.models.sequence_scores`): Gao et al.'s (2022) set-up, where a large "gold" RM
labels the pairs a small proxy RM learns from.

Monitors are measured, never optimised: their values are logged as `monitor/<name>` and are part of no
reward and no loss.
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rlhfkit.errors import UsageError
from rlhfkit.tasks.base import load_gold
from rlhfkit.tasks.rewards import RewardFunction, Row, call_reward_function

MONITOR = "monitor/"  # the metric prefix of a monitor's values
RM_BATCH = 16  # sequences a reward-model scorer reads in one forward pass


@dataclass(frozen=True)
class Scorer:
    """A named score of (prompt, response) pairs. `spec`: as the user wrote it; `name`: the function's name,
    or the folder's."""

    name: str
    spec: str

    def score(
        self,
        prompts: Sequence[str],
        responses: Sequence[str],
        rows: Sequence[Row] | None = None,
        *,
        messages: Sequence[list[dict] | None] | None = None,
        finished: Sequence[bool] | None = None,
    ) -> list[float]:
        """One float per (prompt, response). `prompts`: the text reward functions see (a conversation
        rendered with the policy's template); `responses`: without the stop token that ended them; `rows`:
        each example's data row (columns for a function that takes them); `messages`: each prompt's
        conversation, None for a text prompt (what an RM renders with its own template); `finished`: whether
        a stop token ended each response (default all: an RM closes it with its own end, an unfinished one is
        read open, as PPO's RM reads it)."""
        raise NotImplementedError


@dataclass(frozen=True)
class FunctionScorer(Scorer):
    """A `module:function` score: `call_reward_function` (checked values; a RewardFunctionError on
    failure)."""

    function: RewardFunction
    concurrency: int = 16

    def score(self, prompts, responses, rows=None, *, messages=None, finished=None) -> list[float]:
        return call_reward_function(self.function, prompts, responses, self.concurrency, rows)


@dataclass(frozen=True)
class ModelScorer(Scorer):
    """A reward-model folder's raw score, on its own tokens; no grad, eval mode, `batch_size` at a time."""

    model: Any  # a sequence-classification model with one label
    tokenizer: Any  # its own
    end: int  # where it reads a finished conversation: its template's end of turn
    limit: int | None  # the most tokens it reads (its position embeddings)
    batch_size: int = RM_BATCH

    def sequences(self, prompts, responses, messages, finished) -> list[list[int]]:
        """Each example in the RM's tokens, as PPO re-encodes episodes for an RM with its own tokenizer
        (`rm_sequences`: closed as `rm` closes a finished response, cut from the left past `limit`)."""
        from rlhfkit.algorithms.ppo.rewards.episodes import EpisodeTexts  # algorithms import tasks
        from rlhfkit.algorithms.ppo.rewards.model import rm_sequences

        n = len(prompts)
        messages = messages if messages is not None else [None] * n
        records = [{"messages": m} if m else {"prompt": p} for p, m in zip(prompts, messages, strict=True)]
        done = [True] * n if finished is None else [bool(f) for f in finished]
        texts = EpisodeTexts(records, [], [], [], done, list(responses))
        return rm_sequences(texts, self.tokenizer, self.limit, self.end)

    @torch.no_grad()
    def score(self, prompts, responses, rows=None, *, messages=None, finished=None) -> list[float]:
        from rlhfkit.data import pad
        from rlhfkit.models import sequence_scores

        sequences = self.sequences(prompts, responses, messages, finished)
        device, scores = next(self.model.parameters()).device, []
        for start in range(0, len(sequences), self.batch_size):
            ids, mask = pad(sequences[start : start + self.batch_size], self.tokenizer.pad_token_id, "right")
            scores += sequence_scores(self.model, ids.to(device), mask.to(device)).float().tolist()  # (b,)
        return scores

    def to(self, device: torch.device) -> ModelScorer:
        self.model.to(device)
        return self


def is_reward_model_folder(folder: str) -> bool:
    """Whether `folder` holds a sequence-classification model with one label (or an adapter on one)."""
    from transformers import AutoConfig

    from rlhfkit.models.lora import is_adapter_folder

    if is_adapter_folder(folder):  # an RM trained with LoRA: `load_scalar_model` merges it into its base
        return True
    try:
        config = AutoConfig.from_pretrained(folder)
    except Exception:  # no config.json, or one transformers cannot read
        return False
    classifies = any(a.endswith("ForSequenceClassification") for a in config.architectures or [])
    return classifies and config.num_labels == 1


def model_scorer(folder: str, what: str) -> ModelScorer:
    """The reward model in `folder` (on the CPU, eval mode); a UsageError naming it (as `what`) when it is
    not one."""
    from rlhfkit.data.encode import end_of_turn
    from rlhfkit.models import load_scalar_model, load_tokenizer

    if not Path(folder).is_dir() or not is_reward_model_folder(folder):
        raise UsageError(
            f"{what} {folder!r}: not a reward-model folder (a folder saved by `rlhfkit rm`, or a "
            "sequence-classification model with one label)"
        )
    tokenizer = load_tokenizer(folder)
    model = load_scalar_model(folder, tokenizer).eval()
    limit = getattr(model.config, "max_position_embeddings", None)
    return ModelScorer(Path(folder).resolve().name, folder, model, tokenizer, end_of_turn(tokenizer), limit)


def function_scorer(spec: str, what: str, concurrency: int = 16) -> FunctionScorer:
    """`module:function` as a scorer; an import problem is a UsageError naming it (as `what`)."""
    function = RewardFunction(spec, load_gold(spec, what))  # `load_reward_function`, under the caller's name
    return FunctionScorer(function.name, spec, function, concurrency)


def callable_scorer(fn: Callable, spec: str | None = None) -> FunctionScorer:
    """A callable (given from Python: `evaluate(config, gold=fn)`) as a scorer named after it; `spec`:
    where it came from, by default `module:name`."""
    name = getattr(fn, "__name__", type(fn).__name__)
    function = RewardFunction(spec or f"{getattr(fn, '__module__', None) or 'python'}:{name}", fn)
    return FunctionScorer(function.name or name, function.spec, function)


def load_scorer(spec: str, what: str, concurrency: int = 16) -> Scorer:
    """An existing folder -> its reward model; `module:function` -> the function; anything else is a
    UsageError of one line naming `what` (e.g. "gold")."""
    if Path(spec).is_dir():
        return model_scorer(spec, what)
    if ":" in spec:
        return function_scorer(spec, what, concurrency)
    raise UsageError(f"{what} {spec!r}: neither a reward-model folder nor module:function")


def unique_names(scorers: list[Scorer]) -> list[Scorer]:
    """`scorers` with unique names, as PPO's reward components get them (`component_names`): a scorer's own
    name, or its whole spec when another has that name. The same spec twice is a UsageError."""
    specs = [s.spec for s in scorers]
    twice = next((spec for spec in specs if specs.count(spec) > 1), None)
    if twice is not None:
        raise UsageError(f"monitor {twice!r} is listed twice")
    short = [s.name for s in scorers]
    return [dataclasses.replace(s, name=s.spec) if short.count(s.name) > 1 else s for s in scorers]


def load_monitors(config: Any) -> list[Scorer]:
    """The monitors of a `ppo` or `dpo` config: `monitor_functions` (`module:function`), then
    `monitor_models` (reward-model folders), with unique names; a bad one is a UsageError of one line. Load
    them before anything is written (and before the run's seed is set: loading a model may draw)."""
    concurrency = getattr(config, "reward_concurrency", 16)
    functions = [function_scorer(s, "monitor_functions", concurrency) for s in config.monitor_functions]
    models = [model_scorer(s, "monitor_models") for s in config.monitor_models]
    return unique_names([*functions, *models])


def monitor_scores(
    monitors: list[Scorer],
    prompts: Sequence[str],
    responses: Sequence[str],
    rows: Sequence[Row] | None = None,
    *,
    messages: Sequence[list[dict] | None] | None = None,
    finished: Sequence[bool] | None = None,
) -> dict[str, list[float]]:
    """{`monitor/<name>`: one value per example} of every monitor (arguments as `Scorer.score`'s), the
    random streams left as they were (a run with monitors draws what it draws without them). A function that
    fails raises its RewardFunctionError."""
    with untouched_random_state():
        return {
            f"{MONITOR}{m.name}": m.score(prompts, responses, rows, messages=messages, finished=finished)
            for m in monitors
        }


@contextlib.contextmanager
def untouched_random_state() -> Iterator[None]:
    """Python's, NumPy's and torch's (CPU and CUDA) global random states restored on leaving: whatever the
    user's monitor draws, the run's own draws do not move."""
    import numpy as np

    python, numpy = random.getstate(), np.random.get_state()
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(python)
        np.random.set_state(numpy)


def monitor_means(values: dict[str, list[float]], prefix: str = MONITOR) -> dict[str, float]:
    """The mean of each monitor's values, its key's `monitor/` replaced by `prefix` (`monitor/train/` for
    the training batch's)."""
    return {prefix + k.removeprefix(MONITOR): sum(v) / len(v) for k, v in values.items() if v}
